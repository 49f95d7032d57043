//! `KmsError`: every failure a request can meet, mapped to a gRPC status in one place.

use kms_core::barrier::BarrierError;
use kms_core::shares::ShareError;

use crate::storage::StorageError;

/// Errors returned by the server's services. Messages say what to do next and never contain
/// secret material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error(
        "kms is sealed: unseal it with `kms-cli operator unseal` ({0} of {1} shares submitted)"
    )]
    Sealed(u32, u32),
    #[error("kms is not initialised: run `kms-cli operator init --shares N --threshold T`")]
    NotInitialized,
    #[error(
        "kms is already initialised: use `kms-cli operator status`, or `rekey` to replace the shares"
    )]
    AlreadyInitialized,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("storage unavailable: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl KmsError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

impl From<BarrierError> for KmsError {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::Random => Self::Internal(e.to_string()),
            // A stored record failed authentication: storage was altered or damaged.
            _ => Self::Internal(format!("stored data failed integrity check: {e}")),
        }
    }
}

impl From<ShareError> for KmsError {
    fn from(e: ShareError) -> Self {
        match e {
            ShareError::Internal(_) => Self::Internal(e.to_string()),
            _ => Self::InvalidArgument(e.to_string()),
        }
    }
}

impl From<KmsError> for tonic::Status {
    fn from(e: KmsError) -> Self {
        let msg = e.to_string();
        match e {
            KmsError::Sealed(..) => tonic::Status::unavailable(msg),
            KmsError::NotInitialized | KmsError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(msg)
            }
            KmsError::AlreadyInitialized => tonic::Status::already_exists(msg),
            KmsError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            KmsError::Storage(StorageError::Conflict { .. }) => tonic::Status::aborted(format!(
                "{msg}; another change happened at the same time: retry"
            )),
            KmsError::Storage(_) => tonic::Status::unavailable(msg),
            KmsError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
