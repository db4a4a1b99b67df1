//! The local cloud's bootstrap creates what template.yaml declares, as declared.

use aws_sdk_dynamodb::types::TimeToLiveStatus;
use aws_sdk_sqs::types::QueueAttributeName;
use infra::cloud::template::Template;

#[tokio::test]
async fn creates_every_declared_resource_with_its_settings() {
    let stack = support::stack().await;
    let resolver = &stack.resolver;
    let aws = support::aws().await;
    let template =
        Template::load(&support::root().join("template.yaml").to_string_lossy()).unwrap();

    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    for table in template.tables(resolver).unwrap() {
        let ttl = dynamodb
            .describe_time_to_live()
            .table_name(&table.name)
            .send()
            .await
            .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        assert_eq!(
            ttl.time_to_live_status(),
            Some(&TimeToLiveStatus::Enabled),
            "{}",
            table.name
        );
        assert_eq!(ttl.attribute_name(), Some("expires_at"));
    }

    let sqs = aws_sdk_sqs::Client::new(&aws);
    let events_url = stack.env("ingest").required("EVENTS_QUEUE_URL").unwrap();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&events_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    assert_eq!(attributes[&QueueAttributeName::VisibilityTimeout], "180");
    assert_eq!(attributes[&QueueAttributeName::FifoQueue], "true");
    assert!(!attributes.contains_key(&QueueAttributeName::RedrivePolicy));
    let alerts = sqs
        .get_queue_attributes()
        .queue_url(resolver.reference("AlertsQueue").unwrap())
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&alerts.attributes().unwrap()[&QueueAttributeName::RedrivePolicy])
            .unwrap();
    assert_eq!(redrive["maxReceiveCount"], 8);
    assert_eq!(
        redrive["deadLetterTargetArn"],
        resolver.arn("AlertsDeadLetterQueue").unwrap()
    );

    let secrets = aws_sdk_secretsmanager::Client::new(&aws);
    let provider_keys = secrets
        .get_secret_value()
        .secret_id(
            stack
                .env("prices")
                .required("PROVIDER_KEYS_SECRET")
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(provider_keys.secret_string(), Some("{}"));
    let admin = secrets
        .get_secret_value()
        .secret_id(stack.env("usage").required("ADMIN_TOKEN_SECRET").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(admin.secret_string().unwrap().len(), 48);
}

#[tokio::test]
async fn rerunning_keeps_existing_resources_and_the_generated_token() {
    let aws = support::aws().await;
    let template =
        Template::load(&support::root().join("template.yaml").to_string_lossy()).unwrap();
    let stack = support::unique("rerun");
    let mut first = template
        .resolver(&stack, support::REGION, "123456789012", &[])
        .unwrap();
    let token_1 = infra::cloud::bootstrap::bootstrap(&template, &mut first, &aws)
        .await
        .unwrap();
    let mut second = template
        .resolver(&stack, support::REGION, "123456789012", &[])
        .unwrap();
    let token_2 = infra::cloud::bootstrap::bootstrap(&template, &mut second, &aws)
        .await
        .unwrap();

    assert_eq!(token_1, token_2);
    assert_eq!(token_1[0].name, format!("{stack}/admin-token"));
    assert_eq!(
        first.reference("EventsQueue"),
        second.reference("EventsQueue")
    );
    assert_eq!(first.arn("UsageTable"), second.arn("UsageTable"));
}
