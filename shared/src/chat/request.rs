//! `POST /api/v1/chat/stream` bodies, checked before anything streams: a
//! value of [`ChatRequest`] is a request Anthropic can be sent.

use base64::Engine;
use serde::Deserialize;

use super::settings::ChatSettings;
use crate::metering::types::Invalid;

pub const MAX_IMAGES: usize = 5;
/// Per image, decoded. (Lambda's 6 MB request limit caps the total first.)
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_MESSAGE_CHARS: usize = 100_000;
pub const MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// A conversation id: 1–64 characters of `[A-Za-z0-9_-]`, chosen by the
/// client or generated. Conversations belong to the user who started them:
/// they are stored under the user's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationId(String);

impl ConversationId {
    pub fn generate() -> Self {
        Self(format!("conv_{}", uuid::Uuid::new_v4().simple()))
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Ok(Self(value.to_owned()))
        } else {
            Err(Invalid(
                "conversation_id must be 1 to 64 characters of A-Z a-z 0-9 _ -".to_owned(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub media_type: &'static str,
    /// Base64, as received (checked to decode).
    pub data: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub conversation_id: ConversationId,
    /// Whether the client named the conversation (so it may have history).
    pub continues: bool,
    pub message: String,
    pub images: Vec<Image>,
    pub model: String,
    pub max_tokens: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    conversation_id: Option<String>,
    message: String,
    #[serde(default)]
    images: Vec<RawImage>,
    model: Option<String>,
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    media_type: String,
    data: String,
}

impl ChatRequest {
    pub fn parse(body: &[u8], settings: &ChatSettings) -> Result<Self, Invalid> {
        let raw: RawRequest =
            serde_json::from_slice(body).map_err(|e| Invalid(format!("invalid body: {e}")))?;

        if raw.message.trim().is_empty() {
            return Err(Invalid("message must not be empty".to_owned()));
        }
        if raw.message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(Invalid(format!(
                "message must be at most {MAX_MESSAGE_CHARS} characters"
            )));
        }
        if raw.images.len() > MAX_IMAGES {
            return Err(Invalid(format!("at most {MAX_IMAGES} images")));
        }
        let images = raw
            .images
            .into_iter()
            .enumerate()
            .map(|(i, image)| parse_image(i, image))
            .collect::<Result<Vec<_>, _>>()?;

        let model = match raw.model {
            None => settings.default_model.clone(),
            Some(model) if settings.models.contains_key(&model) => model,
            Some(model) => {
                let allowed: Vec<&str> = settings.models.keys().map(String::as_str).collect();
                return Err(Invalid(format!(
                    "model {model:?} is not offered; use one of: {}",
                    allowed.join(", ")
                )));
            }
        };
        let max_tokens = match raw.max_tokens {
            None => settings.default_max_tokens,
            Some(0) => return Err(Invalid("max_tokens must be at least 1".to_owned())),
            Some(n) => n.min(settings.max_tokens_cap),
        };
        let (conversation_id, continues) = match raw.conversation_id {
            Some(id) => (ConversationId::parse(&id)?, true),
            None => (ConversationId::generate(), false),
        };
        Ok(Self {
            conversation_id,
            continues,
            message: raw.message,
            images,
            model,
            max_tokens,
        })
    }
}

fn parse_image(index: usize, image: RawImage) -> Result<Image, Invalid> {
    let media_type = MEDIA_TYPES
        .into_iter()
        .find(|t| *t == image.media_type)
        .ok_or_else(|| {
            Invalid(format!(
                "images[{index}].media_type must be one of: {}",
                MEDIA_TYPES.join(", ")
            ))
        })?;
    // Decoded size from the encoded length, before decoding anything big.
    if image.data.len() / 4 * 3 > MAX_IMAGE_BYTES + 2 {
        return Err(Invalid(format!("images[{index}] is larger than 5 MB")));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&image.data)
        .map_err(|_| Invalid(format!("images[{index}].data is not valid base64")))?;
    if decoded.is_empty() {
        return Err(Invalid(format!("images[{index}] is empty")));
    }
    if decoded.len() > MAX_IMAGE_BYTES {
        return Err(Invalid(format!("images[{index}] is larger than 5 MB")));
    }
    Ok(Image {
        media_type,
        data: image.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use serde_json::json;

    fn settings() -> ChatSettings {
        ChatSettings::from_env(&Env::default()).unwrap()
    }

    fn parse(body: serde_json::Value) -> Result<ChatRequest, String> {
        ChatRequest::parse(body.to_string().as_bytes(), &settings()).map_err(|e| e.0)
    }

    #[test]
    fn fills_in_the_defaults() {
        let request = parse(json!({"message": "hello"})).unwrap();
        assert_eq!(request.model, "claude-sonnet-4-5");
        assert_eq!(request.max_tokens, 1024);
        assert!(!request.continues);
        assert!(request.conversation_id.as_str().starts_with("conv_"));
    }

    #[test]
    fn lowers_max_tokens_to_the_cap() {
        let request = parse(json!({"message": "hi", "max_tokens": 1_000_000})).unwrap();
        assert_eq!(request.max_tokens, 4096);
    }

    #[test]
    fn keeps_a_named_conversation() {
        let request = parse(json!({"message": "hi", "conversation_id": "abc-1"})).unwrap();
        assert_eq!(request.conversation_id.as_str(), "abc-1");
        assert!(request.continues);
    }

    #[test]
    fn accepts_up_to_five_valid_images() {
        let image = json!({"media_type": "image/png", "data": "iVBORw0KGgo="});
        let request = parse(json!({"message": "what is this", "images": vec![image; 5]})).unwrap();
        assert_eq!(request.images.len(), 5);
        assert_eq!(request.images[0].media_type, "image/png");
    }

    #[test]
    fn rejects_each_bad_input_with_a_reason() {
        let image = |t: &str, d: &str| json!({"media_type": t, "data": d});
        let big = "A".repeat(MAX_IMAGE_BYTES / 3 * 4 + 8);
        let cases = [
            (json!({}), "missing field `message`"),
            (json!({"message": "  "}), "message must not be empty"),
            (
                json!({"message": "x".repeat(MAX_MESSAGE_CHARS + 1)}),
                "at most",
            ),
            (json!({"message": "hi", "extra": 1}), "unknown field"),
            (
                json!({"message": "hi", "model": "gpt-4"}),
                "claude-haiku-4-5, claude-sonnet-4-5",
            ),
            (json!({"message": "hi", "max_tokens": 0}), "at least 1"),
            (json!({"message": "hi", "max_tokens": -1}), "invalid body"),
            (
                json!({"message": "hi", "conversation_id": "a/b"}),
                "conversation_id",
            ),
            (
                json!({"message": "hi", "images": [image("image/tiff", "AAAA")]}),
                "media_type",
            ),
            (
                json!({"message": "hi", "images": [image("image/png", "not base64!")]}),
                "base64",
            ),
            (
                json!({"message": "hi", "images": [image("image/png", "")]}),
                "empty",
            ),
            (
                json!({"message": "hi", "images": [image("image/png", &big)]}),
                "larger than 5 MB",
            ),
            (
                json!({"message": "hi", "images": vec![image("image/png", "AAAA"); 6]}),
                "at most 5",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body.clone()).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
        assert!(ChatRequest::parse(b"not json", &settings()).is_err());
    }
}
