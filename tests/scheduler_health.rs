//! Health and reflection are served on the Scheduler's port, without a token.
mod common;

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_scheduler_service() {
    let mut t = TestServer::start().await;
    let mut health = HealthClient::new(channel(&t.url()).await);
    for service in ["", "sendlater.v1.Scheduler"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?}: {s}"))
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_scheduler_service() {
    let mut t = TestServer::start().await;
    let names = reflection_services(&t.url()).await;
    assert!(
        names.iter().any(|n| n == "sendlater.v1.Scheduler"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    t.stop().await;
}
