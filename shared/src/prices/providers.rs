//! The five upstream price providers: who they are, their keys, and how
//! each one's response shape parses into normalised [`Quote`]s.
//!
//! Parsing is separate from HTTP (the [`super::upstream`] edge) so each
//! provider's real formats (success and every error shape) are tested on
//! recorded bodies. Quirks handled: metals.dev reports errors with HTTP 200
//! and `status != "success"`; MetalPriceAPI and Metals-API quote metals as
//! inverse rates (ounces per currency unit) unless they also send the direct
//! `USDXAU` form; GoldAPI.io and gold-api.com answer one metal per request.
//!
//! Keys come from one secret (a JSON object of provider name → key) that
//! both price functions read through [`ProviderKeys`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::PriceError;
use super::types::{Currency, Fx, Metal, Quote, Unknown, find};
use crate::config::Upstream;
use crate::secrets::{CachedSecret, SecretSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderId {
    MetalsDev,
    MetalPriceApi,
    MetalsApi,
    GoldApiIo,
    GoldApiCom,
}

impl ProviderId {
    /// Default priority order: metals.dev first.
    pub const ALL: [ProviderId; 5] = [
        ProviderId::MetalsDev,
        ProviderId::MetalPriceApi,
        ProviderId::MetalsApi,
        ProviderId::GoldApiIo,
        ProviderId::GoldApiCom,
    ];

    /// The name used in configuration, the provider-keys secret and the API.
    pub fn name(self) -> &'static str {
        match self {
            ProviderId::MetalsDev => "metals.dev",
            ProviderId::MetalPriceApi => "metalpriceapi",
            ProviderId::MetalsApi => "metals-api",
            ProviderId::GoldApiIo => "goldapi.io",
            ProviderId::GoldApiCom => "gold-api.com",
        }
    }

    pub fn parse(name: &str) -> Result<Self, Unknown> {
        find("provider", name, &Self::ALL, ProviderId::name, |p| {
            p.name() == name
        })
    }

    /// gold-api.com needs no key.
    pub fn needs_key(self) -> bool {
        self != ProviderId::GoldApiCom
    }

    pub fn upstream(self) -> Upstream {
        match self {
            ProviderId::MetalsDev => Upstream::MetalsDev,
            ProviderId::MetalPriceApi => Upstream::MetalPriceApi,
            ProviderId::MetalsApi => Upstream::MetalsApi,
            ProviderId::GoldApiIo => Upstream::GoldApiIo,
            ProviderId::GoldApiCom => Upstream::GoldApiCom,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("no API key configured")]
    NoKey,
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("reported an error: {0}")]
    Upstream(String),
    #[error("sent an unusable response: {0}")]
    Invalid(String),
}

/// One configured provider: where it is and its key, if it has one.
#[derive(Clone)]
pub struct Provider {
    pub id: ProviderId,
    pub base_url: String,
    key: Option<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Provider {
    pub fn new(id: ProviderId, base_url: &str, key: Option<String>) -> Self {
        Self {
            id,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key: key.filter(|k| !k.is_empty()),
        }
    }

    /// Whether it can be asked at all (keyless providers always can).
    pub fn is_configured(&self) -> bool {
        self.key.is_some() || !self.id.needs_key()
    }

    /// The key, if it has one (only the HTTP adapter sends it).
    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// The configured providers, in priority order, with their keys from the
/// provider-keys secret. The secret is read lazily and refreshed hourly
/// (keys change rarely; a rotation reaches every instance within the hour).
pub struct ProviderKeys {
    secret: CachedSecret,
    order: Vec<(ProviderId, String)>,
}

impl ProviderKeys {
    const REFRESH: Duration = Duration::from_secs(3600);

    /// `order` is the providers with their base URLs, as
    /// [`super::settings::PriceSettings::providers`] lists them.
    pub fn new(
        source: Arc<dyn SecretSource>,
        secret_id: &str,
        order: Vec<(ProviderId, String)>,
    ) -> Self {
        Self {
            secret: CachedSecret::new(source, secret_id, Self::REFRESH),
            order,
        }
    }

    pub async fn providers(&self) -> Result<Vec<Provider>, PriceError> {
        let secret = self.secret.get().await?;
        with_keys(&self.order, secret.expose())
    }
}

/// `order` with the keys of `secret`. Never echoes the secret.
fn with_keys(order: &[(ProviderId, String)], secret: &str) -> Result<Vec<Provider>, PriceError> {
    let keys: BTreeMap<String, String> =
        serde_json::from_str(secret).map_err(|_| PriceError::BadKeys)?;
    Ok(order
        .iter()
        .map(|(id, url)| Provider::new(*id, url, keys.get(id.name()).cloned()))
        .collect())
}

fn json(status: u16, body: &str) -> Result<Value, ProviderError> {
    let value: Result<Value, _> = serde_json::from_str(body);
    match (status, value) {
        (200..=299, Ok(v)) => Ok(v),
        // Error bodies are still worth reading for their message.
        (_, Ok(v)) => {
            Err(upstream_message(&v).map_or(ProviderError::Status(status), ProviderError::Upstream))
        }
        (200..=299, Err(_)) => Err(ProviderError::Invalid("not JSON".into())),
        (_, Err(_)) => Err(ProviderError::Status(status)),
    }
}

/// The human message in the error shapes the providers use.
fn upstream_message(v: &Value) -> Option<String> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    text(&v["error_message"])
        .or_else(|| text(&v["error"]["message"]))
        .or_else(|| text(&v["error"]["info"]))
        .or_else(|| text(&v["error"]))
        .or_else(|| text(&v["message"]))
}

fn positive(value: Option<f64>, what: &str) -> Result<f64, ProviderError> {
    match value {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(ProviderError::Invalid(format!(
            "{what} missing or not a positive number"
        ))),
    }
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(|s| DateTime::from_timestamp(s, 0)),
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.to_utc()),
        _ => None,
    }
}

/// metals.dev: `{status, currency, unit, metals: {gold, ...}, timestamps: {metal}}`.
pub fn parse_metals_dev(
    status: u16,
    body: &str,
    metals: &[Metal],
    currency: &Currency,
) -> Result<Vec<Quote>, ProviderError> {
    let v = json(status, body)?;
    if v["status"] != "success" {
        return Err(ProviderError::Upstream(
            upstream_message(&v).unwrap_or_else(|| format!("status {}", v["status"])),
        ));
    }
    if v["currency"].as_str() != Some(currency.as_str()) || v["unit"].as_str() != Some("toz") {
        return Err(ProviderError::Invalid(format!(
            "quoted in {} per {}",
            v["currency"], v["unit"]
        )));
    }
    let ts = timestamp(&v["timestamps"]["metal"])
        .ok_or_else(|| ProviderError::Invalid("no metal timestamp".into()))?;
    metals
        .iter()
        .map(|m| {
            Ok(Quote {
                metal: *m,
                currency: currency.clone(),
                price: positive(v["metals"][m.name()].as_f64(), m.name())?,
                bid: None,
                ask: None,
                provider: ProviderId::MetalsDev.name().to_owned(),
                ts,
                fx: None,
            })
        })
        .collect()
}

/// MetalPriceAPI and Metals-API, asked with `base=USD` (every plan allows
/// it): `{success, base, timestamp, rates: {XAU: oz per USD, USDXAU: USD per
/// oz, EUR: EUR per USD}}`. Another `currency` is converted from the dollar
/// price with the same answer's rate, named in the quote's `fx`.
pub fn parse_inverse_rates(
    id: ProviderId,
    status: u16,
    body: &str,
    metals: &[Metal],
    currency: &Currency,
) -> Result<Vec<Quote>, ProviderError> {
    let v = json(status, body)?;
    if v["success"] != true {
        return Err(ProviderError::Upstream(
            upstream_message(&v).unwrap_or_else(|| "success is not true".into()),
        ));
    }
    if v["base"].as_str() != Some("USD") {
        return Err(ProviderError::Invalid(format!("base is {}", v["base"])));
    }
    let ts =
        timestamp(&v["timestamp"]).ok_or_else(|| ProviderError::Invalid("no timestamp".into()))?;
    let fx = match currency.as_str() {
        "USD" => None,
        code => Some(Fx {
            rate: positive(v["rates"][code].as_f64(), code)?,
            source: id.name().to_owned(),
            ts,
        }),
    };
    metals
        .iter()
        .map(|m| {
            let direct = v["rates"][format!("USD{}", m.symbol())].as_f64();
            let usd = match direct {
                Some(p) => positive(Some(p), m.symbol())?,
                None => 1.0 / positive(v["rates"][m.symbol()].as_f64(), m.symbol())?,
            };
            let price = match &fx {
                None => usd,
                Some(fx) => fx.convert(usd).ok_or_else(|| {
                    ProviderError::Invalid(format!("{} cannot be converted", m.symbol()))
                })?,
            };
            Ok(Quote {
                metal: *m,
                currency: currency.clone(),
                price,
                bid: None,
                ask: None,
                provider: id.name().to_owned(),
                ts,
                fx: fx.clone(),
            })
        })
        .collect()
}

/// GoldAPI.io (`{timestamp, metal, currency, price, bid, ask}`) and
/// gold-api.com (`{currency, price, symbol, updatedAt}`): one metal each.
pub fn parse_single(
    id: ProviderId,
    status: u16,
    body: &str,
    metal: Metal,
    currency: &Currency,
) -> Result<Quote, ProviderError> {
    let v = json(status, body)?;
    if let Some(message) = v["error"].as_str() {
        return Err(ProviderError::Upstream(message.to_owned()));
    }
    let (symbol, ts) = match id {
        ProviderId::GoldApiIo => (&v["metal"], timestamp(&v["timestamp"])),
        _ => (&v["symbol"], timestamp(&v["updatedAt"])),
    };
    if symbol.as_str() != Some(metal.symbol()) || v["currency"].as_str() != Some(currency.as_str())
    {
        return Err(ProviderError::Invalid(format!(
            "answered for {symbol} in {}",
            v["currency"]
        )));
    }
    let optional = |field: &str| v[field].as_f64().filter(|p| p.is_finite() && *p > 0.0);
    let ts = ts.ok_or_else(|| ProviderError::Invalid("no timestamp".into()))?;
    // gold-api.com quotes in dollars and converts, naming its rate.
    let fx = match (id, currency.as_str()) {
        (ProviderId::GoldApiCom, code) if code != "USD" => Some(Fx {
            rate: positive(v["exchangeRate"].as_f64(), "exchangeRate")?,
            source: id.name().to_owned(),
            ts,
        }),
        _ => None,
    };
    Ok(Quote {
        metal,
        currency: currency.clone(),
        price: positive(v["price"].as_f64(), "price")?,
        bid: optional("bid"),
        ask: optional("ask"),
        provider: id.name().to_owned(),
        ts,
        fx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::usd()
    }

    const METALS: [Metal; 2] = [Metal::Gold, Metal::Silver];

    #[test]
    fn metals_dev_success() {
        let body = r#"{"status":"success","currency":"USD","unit":"toz","metals":{"gold":2650.12,"silver":31.05,"platinum":960.4,"palladium":1010.2},
            "currencies":{"EUR":1.05},"timestamps":{"metal":"2026-11-22T10:00:03.123Z","currency":"2026-11-22T10:00:00.000Z"}}"#;
        let quotes = parse_metals_dev(200, body, &METALS, &usd()).unwrap();
        assert_eq!(quotes[0].price, 2650.12);
        assert_eq!(quotes[1].price, 31.05);
        assert_eq!(quotes[0].provider, "metals.dev");
        assert_eq!(quotes[0].ts.to_rfc3339(), "2026-11-22T10:00:03.123+00:00");
    }

    #[test]
    fn metals_dev_error_with_http_200() {
        let body = r#"{"status":"failure","error_code":1101,"error_message":"Invalid API Key."}"#;
        assert_eq!(
            parse_metals_dev(200, body, &METALS, &usd()),
            Err(ProviderError::Upstream("Invalid API Key.".into()))
        );
    }

    #[test]
    fn metals_dev_missing_metal_or_wrong_unit_is_invalid() {
        let missing = r#"{"status":"success","currency":"USD","unit":"toz","metals":{"gold":2650.12},"timestamps":{"metal":"2026-11-22T10:00:03Z"}}"#;
        assert!(matches!(
            parse_metals_dev(200, missing, &METALS, &usd()),
            Err(ProviderError::Invalid(_))
        ));
        let grams = r#"{"status":"success","currency":"USD","unit":"g","metals":{"gold":85.2,"silver":1.0},"timestamps":{"metal":"2026-11-22T10:00:03Z"}}"#;
        assert!(matches!(
            parse_metals_dev(200, grams, &METALS, &usd()),
            Err(ProviderError::Invalid(_))
        ));
    }

    #[test]
    fn metalpriceapi_prefers_direct_rates_and_inverts_otherwise() {
        let body = r#"{"success":true,"base":"USD","timestamp":1795341600,"rates":{"XAU":0.00037735,"USDXAU":2650.12,"XAG":0.032206}}"#;
        let quotes =
            parse_inverse_rates(ProviderId::MetalPriceApi, 200, body, &METALS, &usd()).unwrap();
        assert_eq!(quotes[0].price, 2650.12);
        assert!((quotes[1].price - 1.0 / 0.032206).abs() < 1e-9);
        assert_eq!(
            quotes[0].ts,
            DateTime::from_timestamp(1_795_341_600, 0).unwrap()
        );
    }

    #[test]
    fn another_currency_is_converted_with_the_answers_own_rate_in_decimal() {
        let eur = Currency::try_from("EUR".to_owned()).unwrap();
        let body = r#"{"success":true,"base":"USD","timestamp":1795341600,"rates":{"EUR":0.9213,"USDXAU":2650.12,"XAG":0.032206}}"#;
        let quotes =
            parse_inverse_rates(ProviderId::MetalPriceApi, 200, body, &METALS, &eur).unwrap();
        assert_eq!(
            (quotes[0].price, quotes[0].currency.as_str()),
            (2441.56, "EUR")
        );
        let fx = quotes[0].fx.as_ref().unwrap();
        assert_eq!((fx.rate, fx.source.as_str()), (0.9213, "metalpriceapi"));
        assert_eq!(fx.ts, DateTime::from_timestamp(1_795_341_600, 0).unwrap());
        // Without the currency's rate, or in another base, nothing is guessed.
        let no_rate = r#"{"success":true,"base":"USD","timestamp":1795341600,"rates":{"USDXAU":2650.12,"XAG":0.032206}}"#;
        assert!(matches!(
            parse_inverse_rates(ProviderId::MetalsApi, 200, no_rate, &METALS, &eur),
            Err(ProviderError::Invalid(_))
        ));
        let euro_base =
            r#"{"success":true,"base":"EUR","timestamp":1795341600,"rates":{"EURXAU":2441.5}}"#;
        assert!(matches!(
            parse_inverse_rates(ProviderId::MetalsApi, 200, euro_base, &METALS, &eur),
            Err(ProviderError::Invalid(_))
        ));
    }

    #[test]
    fn gold_api_com_names_the_rate_it_converted_with() {
        let jpy = Currency::try_from("JPY".to_owned()).unwrap();
        let body = r#"{"currency":"JPY","currencySymbol":"¥","exchangeRate":151.62,"name":"Gold","price":401805.0,"symbol":"XAU","updatedAt":"2026-11-22T10:00:00Z","updatedAtReadable":"a few seconds ago"}"#;
        let q = parse_single(ProviderId::GoldApiCom, 200, body, Metal::Gold, &jpy).unwrap();
        assert_eq!(q.price, 401_805.0);
        let fx = q.fx.unwrap();
        assert_eq!((fx.rate, fx.source.as_str()), (151.62, "gold-api.com"));
        let unknown = r#"{"error":"Currency XXX not supported"}"#;
        assert_eq!(
            parse_single(ProviderId::GoldApiCom, 400, unknown, Metal::Gold, &jpy),
            Err(ProviderError::Upstream("Currency XXX not supported".into()))
        );
    }

    #[test]
    fn metalpriceapi_and_metals_api_errors() {
        let mpa = r#"{"success":false,"error":{"statusCode":101,"message":"Invalid API key"}}"#;
        assert_eq!(
            parse_inverse_rates(ProviderId::MetalPriceApi, 200, mpa, &METALS, &usd()),
            Err(ProviderError::Upstream("Invalid API key".into()))
        );
        let ma = r#"{"success":false,"error":{"code":104,"type":"usage_limit_reached","info":"Your monthly usage limit has been reached."}}"#;
        assert_eq!(
            parse_inverse_rates(ProviderId::MetalsApi, 200, ma, &METALS, &usd()),
            Err(ProviderError::Upstream(
                "Your monthly usage limit has been reached.".into()
            ))
        );
        let zero =
            r#"{"success":true,"base":"USD","timestamp":1795341600,"rates":{"XAU":0,"XAG":0.03}}"#;
        assert!(matches!(
            parse_inverse_rates(ProviderId::MetalsApi, 200, zero, &METALS, &usd()),
            Err(ProviderError::Invalid(_))
        ));
    }

    #[test]
    fn goldapi_io_success_with_bid_and_ask_and_its_error_shape() {
        let body = r#"{"timestamp":1795341600,"metal":"XAU","currency":"USD","exchange":"FOREXCOM","symbol":"FOREXCOM:XAUUSD",
            "prev_close_price":2641.3,"open_price":2641.3,"price":2650.12,"ask":2650.5,"bid":2649.8,"price_gram_24k":85.2}"#;
        let q = parse_single(ProviderId::GoldApiIo, 200, body, Metal::Gold, &usd()).unwrap();
        assert_eq!(
            (q.price, q.bid, q.ask),
            (2650.12, Some(2649.8), Some(2650.5))
        );
        assert_eq!(
            parse_single(
                ProviderId::GoldApiIo,
                403,
                r#"{"error":"Invalid API Key"}"#,
                Metal::Gold,
                &usd()
            ),
            Err(ProviderError::Upstream("Invalid API Key".into()))
        );
    }

    #[test]
    fn gold_api_com_success_and_mismatched_symbol() {
        let body = r#"{"currency":"USD","currencySymbol":"$","exchangeRate":1,"name":"Gold","price":2650.12,"symbol":"XAU","updatedAt":"2026-11-22T10:00:00Z","updatedAtReadable":"a few seconds ago"}"#;
        let q = parse_single(ProviderId::GoldApiCom, 200, body, Metal::Gold, &usd()).unwrap();
        assert_eq!((q.price, q.bid), (2650.12, None));
        assert!(matches!(
            parse_single(ProviderId::GoldApiCom, 200, body, Metal::Silver, &usd()),
            Err(ProviderError::Invalid(_))
        ));
    }

    #[test]
    fn non_json_and_http_errors() {
        assert_eq!(
            parse_single(
                ProviderId::GoldApiCom,
                502,
                "<html>Bad gateway</html>",
                Metal::Gold,
                &usd()
            ),
            Err(ProviderError::Status(502))
        );
        assert!(matches!(
            parse_metals_dev(200, "<html>", &METALS, &usd()),
            Err(ProviderError::Invalid(_))
        ));
    }

    #[test]
    fn keys_are_never_shown() {
        let p = Provider::new(
            ProviderId::MetalsDev,
            "https://api.metals.dev/",
            Some("sekret".into()),
        );
        assert!(!format!("{p:?}").contains("sekret"));
        assert_eq!(p.base_url, "https://api.metals.dev");
        assert!(!Provider::new(ProviderId::MetalsDev, "x", Some(String::new())).is_configured());
        assert!(Provider::new(ProviderId::GoldApiCom, "x", None).is_configured());
    }

    #[test]
    fn keys_come_from_a_json_object_and_bad_secrets_are_not_echoed() {
        let order = [ProviderId::MetalsDev, ProviderId::MetalPriceApi].map(|p| (p, "x".into()));
        let providers = with_keys(&order, r#"{"metals.dev": "k"}"#).unwrap();
        assert!(providers[0].is_configured());
        assert!(!providers[1].is_configured());
        let err = with_keys(&order, "sekret-not-json").unwrap_err();
        assert!(matches!(err, PriceError::BadKeys));
        assert!(!err.to_string().contains("sekret"));
    }

    #[test]
    fn providers_parse_by_name_and_name_the_allowed_values() {
        assert_eq!(ProviderId::parse("goldapi.io"), Ok(ProviderId::GoldApiIo));
        assert_eq!(
            ProviderId::parse("kitco").unwrap_err().to_string(),
            "unknown provider \"kitco\"; allowed: metals.dev, metalpriceapi, metals-api, goldapi.io, gold-api.com"
        );
    }
}
