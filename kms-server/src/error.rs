//! `KmsError`: every failure a request can meet, mapped to a gRPC status in one place.

use kms_core::barrier::BarrierError;
use kms_core::shares::ShareError;

use crate::storage::StorageError;

/// Errors returned by the server's services. Messages say what to do next and never contain
/// secret material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("kms is sealed: unseal it with `kms-cli operator unseal`")]
    Sealed,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
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
    #[error("audit unavailable: {0}")]
    AuditUnavailable(String),
    /// This node cannot serve the request now (e.g. it cannot confirm that its key cache is
    /// current); another node may.
    #[error("{0}")]
    Unavailable(String),
    /// A stored record failed its integrity check or is missing: that key (or enrolment) is
    /// unreadable until the data directory is restored. The message names it.
    #[error("{0}")]
    DataLoss(String),
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

impl From<kms_core::key::LifecycleError> for KmsError {
    fn from(e: kms_core::key::LifecycleError) -> Self {
        if e.is_invalid_argument() {
            Self::InvalidArgument(e.to_string())
        } else {
            Self::FailedPrecondition(e.to_string())
        }
    }
}

impl From<kms_core::ciphertext::CiphertextError> for KmsError {
    fn from(e: kms_core::ciphertext::CiphertextError) -> Self {
        use kms_core::ciphertext::CiphertextError as E;
        match e {
            // Opaque on the wire: a flipped bit, a truncation and a wrong context look alike.
            E::Authentication | E::Malformed(_) => {
                Self::InvalidArgument("ciphertext authentication failed".into())
            }
            E::Context(_) => Self::InvalidArgument(e.to_string()),
            E::Random => Self::Internal(e.to_string()),
        }
    }
}

impl From<kms_core::keyname::KeyNameError> for KmsError {
    fn from(e: kms_core::keyname::KeyNameError) -> Self {
        Self::InvalidArgument(e.to_string())
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
            KmsError::Sealed => tonic::Status::unavailable(msg),
            KmsError::NotFound(_) => tonic::Status::not_found(msg),
            KmsError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            KmsError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            KmsError::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            KmsError::NotInitialized | KmsError::FailedPrecondition(_) => {
                tonic::Status::failed_precondition(msg)
            }
            KmsError::AlreadyInitialized => tonic::Status::already_exists(msg),
            KmsError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            KmsError::Storage(StorageError::Conflict { .. }) => tonic::Status::aborted(format!(
                "{msg}; another change happened at the same time: retry"
            )),
            KmsError::Storage(_) | KmsError::AuditUnavailable(_) | KmsError::Unavailable(_) => {
                tonic::Status::unavailable(msg)
            }
            KmsError::DataLoss(_) => tonic::Status::data_loss(msg),
            KmsError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
