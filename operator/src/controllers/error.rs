//! Controller errors.

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hub API call failed.
    #[error("hub API error: {0}")]
    Hub(#[source] kube::Error),
    /// A member API call failed.
    #[error("member {cluster} API error: {source}")]
    Member {
        /// Member name.
        cluster: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A member cannot be used right now.
    #[error("member {0} is not reachable")]
    MemberUnavailable(String),
    /// Finalizer handling failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object is malformed in a way validation did not catch.
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// Result of controller operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Hub(_) => "hub_api",
            Error::Member { .. } => "member_api",
            Error::MemberUnavailable(_) => "member_unavailable",
            Error::Finalizer(_) => "finalizer",
            Error::Invalid(_) => "invalid",
        }
    }
}

impl Error {
    /// Whether the error is a hub write that lost a race with a newer version of the object (the
    /// reconcile is simply run again on the newer one).
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Hub(e) => crate::scheduler::writes::is_conflict(e),
            Error::Finalizer(f) => match &**f {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => {
                    crate::scheduler::writes::is_conflict(e)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl Error {
    /// Whether the finalizer could not be removed because the object is already gone: an
    /// earlier pass removed it and the API server deleted the object (nothing left to do).
    pub fn is_gone(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        matches!(self, Error::Finalizer(f) if matches!(&**f,
            F::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404))
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Hub(e)
    }
}

/// Attaches the member name to a member API error.
pub trait MemberErr<T> {
    /// Maps a kube error to [`Error::Member`].
    fn member(self, cluster: &str) -> Result<T>;
}

impl<T> MemberErr<T> for std::result::Result<T, kube::Error> {
    fn member(self, cluster: &str) -> Result<T> {
        self.map_err(|source| Error::Member {
            cluster: cluster.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::runtime::finalizer::Error as F;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("x", "y").with_code(code).boxed())
    }

    #[test]
    fn a_finalizer_removal_that_finds_the_object_gone_is_no_failure() {
        let gone = Error::Finalizer(Box::new(F::RemoveFinalizer(api(404))));
        assert!(gone.is_gone() && !gone.is_conflict());
        let raced = Error::Finalizer(Box::new(F::RemoveFinalizer(api(409))));
        assert!(!raced.is_gone() && raced.is_conflict());
        // A job missing while its cleanup runs is a real failure, as is any other 404.
        assert!(!Error::Finalizer(Box::new(F::CleanupFailed(Error::Hub(api(404))))).is_gone());
        assert!(!Error::Hub(api(404)).is_gone());
    }
}
