//! The operations a policy can grant, one per RPC, by their names in policy files.

use std::fmt;
use std::str::FromStr;

// ---- operations ------------------------------------------------------------------------------

/// One name per RPC, as written in policy files (`generate-data-key`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Encrypt,
    Decrypt,
    Reencrypt,
    GenerateDataKey,
    GenerateRandom,
    Create,
    Read,
    List,
    Rotate,
    Configure,
    Disable,
    Enable,
    Revoke,
    ScheduleDeletion,
    CancelDeletion,
    /// Bring your own key: GetImportParameters and ImportKeyMaterial.
    Import,
    /// Wrap a key's material out to a recipient (ExportKey), for exportable keys only.
    Export,
    Seal,
    Rekey,
    RotateBarrier,
    Backup,
    PolicyRead,
    PolicyReload,
    AuditRead,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 24] = [
        Self::Encrypt,
        Self::Decrypt,
        Self::Reencrypt,
        Self::GenerateDataKey,
        Self::GenerateRandom,
        Self::Create,
        Self::Read,
        Self::List,
        Self::Rotate,
        Self::Configure,
        Self::Disable,
        Self::Enable,
        Self::Revoke,
        Self::ScheduleDeletion,
        Self::CancelDeletion,
        Self::Import,
        Self::Export,
        Self::Seal,
        Self::Rekey,
        Self::RotateBarrier,
        Self::Backup,
        Self::PolicyRead,
        Self::PolicyReload,
        Self::AuditRead,
    ];

    /// The kebab-case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Reencrypt => "reencrypt",
            Self::GenerateDataKey => "generate-data-key",
            Self::GenerateRandom => "generate-random",
            Self::Create => "create",
            Self::Read => "read",
            Self::List => "list",
            Self::Rotate => "rotate",
            Self::Configure => "configure",
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Revoke => "revoke",
            Self::ScheduleDeletion => "schedule-deletion",
            Self::CancelDeletion => "cancel-deletion",
            Self::Import => "import",
            Self::Export => "export",
            Self::Seal => "seal",
            Self::Rekey => "rekey",
            Self::RotateBarrier => "rotate-barrier",
            Self::Backup => "backup",
            Self::PolicyRead => "policy-read",
            Self::PolicyReload => "policy-reload",
            Self::AuditRead => "audit-read",
        }
    }

    /// Whether the operation acts on one named key, so that a rule granting it names keys.
    /// `reencrypt` touches two keys: the server asks for a decision on each.
    pub fn needs_key(self) -> bool {
        !matches!(
            self,
            Self::GenerateRandom
                | Self::List
                | Self::Seal
                | Self::Rekey
                | Self::RotateBarrier
                | Self::Backup
                | Self::PolicyRead
                | Self::PolicyReload
                | Self::AuditRead
        )
    }

    /// Whether requests for this operation carry an encryption context.
    pub fn carries_context(self) -> bool {
        matches!(
            self,
            Self::Encrypt | Self::Decrypt | Self::Reencrypt | Self::GenerateDataKey
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation name that is not one of [`Operation::ALL`]; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOperation(pub String);

impl fmt::Display for UnknownOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown operation {:?}; valid operations: ", self.0)?;
        for (i, op) in Operation::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(op.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownOperation {}

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_round_trip() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>().unwrap(), op);
            assert_eq!(op.to_string(), op.as_str());
        }
        let e = "frobnicate".parse::<Operation>().unwrap_err().to_string();
        assert!(
            e.contains("frobnicate") && e.contains("generate-data-key"),
            "{e}"
        );
    }
}
