//! Lease-based leader election: of several operator replicas only the lease holder runs the
//! controllers; one that loses the lease stops acting at once (the process exits and is restarted).

use kube_lease_manager::LeaseManagerBuilder;
use std::time::Duration;

/// Blocks until this process holds the lease `name` in `namespace`, then returns a future that
/// completes when the lease is lost.
pub async fn acquire(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .with_field_manager("gpupool-operator-leader")
        .build()
        .await?;
    let (mut rx, task) = manager.watch().await;
    tracing::info!(lease = name, identity, "waiting to become leader");
    while !*rx.borrow_and_update() {
        rx.changed().await?;
    }
    tracing::info!(lease = name, identity, "became leader");
    Ok(async move {
        loop {
            if rx.changed().await.is_err() || !*rx.borrow() {
                tracing::error!("lost the leader lease; stopping");
                break;
            }
        }
        task.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
}

/// A default identity: the pod name when set, else host name and process id.
pub fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "local".into());
        format!("{host}-{}", std::process::id())
    })
}
