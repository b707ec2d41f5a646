//! The kubelet's pod-resources API (`k8s.io/kubelet/pkg/apis/podresources/v1`, gRPC over the
//! node's `/var/lib/kubelet/pod-resources/kubelet.sock`): which devices each container actually
//! got. With the NVIDIA device plugin the device IDs of `nvidia.com/gpu` are GPU UUIDs — the
//! kubelet's choice, which may differ from gpupool's.
//!
//! The messages are declared with prost's derive, field numbers as in the published `api.proto`
//! (only what `List` returns and gpupool reads; prost skips the other fields). They are written
//! here rather than generated because generating needs `protoc`, which no crate provides, and the
//! subset is four messages.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Default socket of the kubelet's pod-resources API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// gRPC method of `PodResourcesLister.List` (proto package `v1`).
pub const LIST_METHOD: &str = "/v1.PodResourcesLister/List";
/// Resource name of the NVIDIA device plugin.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// `ListPodResourcesRequest {}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// `ListPodResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    /// One entry per pod on the node.
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

/// `PodResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Containers.
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

/// `ContainerResources` (devices only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Devices per resource name.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
}

/// `ContainerDevices` (without topology).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    /// Extended resource name, e.g. `nvidia.com/gpu`.
    #[prost(string, tag = "1")]
    pub resource_name: String,
    /// Device IDs the device plugin reported to the kubelet.
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
}

/// Calls `List` on the kubelet's pod-resources socket.
pub async fn list(socket: &Path) -> Result<ListPodResourcesResponse> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = tonic::transport::Endpoint::from_static("http://pod-resources.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to the kubelet at {}", socket.display()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .with_context(|| format!("kubelet pod-resources API at {}", socket.display()))?;
    let codec =
        tonic_prost::ProstCodec::<ListPodResourcesRequest, ListPodResourcesResponse>::default();
    let resp = grpc
        .unary(
            tonic::Request::new(ListPodResourcesRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static(LIST_METHOD),
            codec,
        )
        .await
        .with_context(|| format!("{LIST_METHOD} on {}", socket.display()))?;
    Ok(resp.into_inner())
}

/// The `nvidia.com/gpu` devices of every container that has some.
pub fn gpu_assignments(resp: &ListPodResourcesResponse) -> Vec<crate::api::PodDevices> {
    let mut out = Vec::new();
    for p in &resp.pod_resources {
        for c in &p.containers {
            let ids: Vec<String> = c
                .devices
                .iter()
                .filter(|d| d.resource_name == NVIDIA_GPU)
                .flat_map(|d| d.device_ids.iter().cloned())
                .collect();
            if !ids.is_empty() {
                out.push(crate::api::PodDevices {
                    namespace: p.namespace.clone(),
                    pod: p.name.clone(),
                    container: c.name.clone(),
                    device_ids: ids,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::task::{Context as TaskContext, Poll};
    use tonic::codegen::http;

    /// A server for the same proto method, as the kubelet serves it: `List` answers `response`.
    #[derive(Clone)]
    struct Lister(ListPodResourcesResponse);

    impl tonic::server::NamedService for Lister {
        const NAME: &'static str = "v1.PodResourcesLister";
    }

    struct ListCall(ListPodResourcesResponse);

    impl tonic::server::UnaryService<ListPodResourcesRequest> for ListCall {
        type Response = ListPodResourcesResponse;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;
        fn call(&mut self, _: tonic::Request<ListPodResourcesRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(self.0.clone())))
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Lister {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
        >;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let answer = self.0.clone();
            Box::pin(async move {
                if req.uri().path() != LIST_METHOD {
                    return Ok(
                        tonic::Status::unimplemented(req.uri().path().to_string()).into_http()
                    );
                }
                let codec = tonic_prost::ProstCodec::<
                    ListPodResourcesResponse,
                    ListPodResourcesRequest,
                >::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(ListCall(answer), req)
                    .await)
            })
        }
    }

    fn sample() -> ListPodResourcesResponse {
        ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "gpt-g0-w0".into(),
                    namespace: "ml".into(),
                    containers: vec![
                        ContainerResources {
                            name: "trainer".into(),
                            devices: vec![
                                ContainerDevices {
                                    resource_name: NVIDIA_GPU.into(),
                                    device_ids: vec!["GPU-b".into(), "GPU-a".into()],
                                },
                                ContainerDevices {
                                    resource_name: "example.com/nic".into(),
                                    device_ids: vec!["nic0".into()],
                                },
                            ],
                        },
                        ContainerResources {
                            name: "logs".into(),
                            devices: vec![],
                        },
                    ],
                },
                PodResources {
                    name: "web".into(),
                    namespace: "default".into(),
                    containers: vec![ContainerResources {
                        name: "nginx".into(),
                        devices: vec![],
                    }],
                },
            ],
        }
    }

    #[tokio::test]
    async fn lists_the_devices_a_kubelet_style_server_reports() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("kubelet.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Lister(sample()))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let resp = list(&sock).await.unwrap();
        assert_eq!(resp, sample(), "round trip through gRPC");
        let got = gpu_assignments(&resp);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].namespace.as_str(),
                got[0].pod.as_str(),
                got[0].container.as_str()
            ),
            ("ml", "gpt-g0-w0", "trainer")
        );
        assert_eq!(got[0].device_ids, vec!["GPU-b", "GPU-a"]);
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let err = list(Path::new("/nonexistent/kubelet.sock"))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/kubelet.sock"),
            "{err:#}"
        );
    }
}
