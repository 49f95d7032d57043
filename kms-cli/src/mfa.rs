//! `kms-cli mfa enroll`: enroll the calling principal for TOTP and show the secret once.

use clap::Subcommand;
use kms_client::proto as pb;
use serde_json::json;
use zeroize::Zeroizing;

use crate::output::{self, Format};
use crate::{Conn, Failure};

#[derive(Subcommand)]
pub(crate) enum Mfa {
    /// Enroll this client's principal: prints an otpauth:// URI (and the base32 secret) for an
    /// authenticator app, once. Then pass `--totp CODE` to operations that require MFA.
    #[command(
        after_help = "Example:\n  kms-cli mfa enroll\n  kms-cli --totp 123456 key schedule-deletion app/old"
    )]
    Enroll,
}

pub(crate) async fn run(cmd: Mfa, conn: &Conn, fmt: Format) -> Result<(), Failure> {
    match cmd {
        Mfa::Enroll => {
            let client = crate::connect(conn).await?;
            let r = client
                .call(client.mfa().enroll(pb::EnrollMfaRequest {}))
                .await?;
            let uri = Zeroizing::new(r.otpauth_uri);
            let secret = Zeroizing::new(r.secret_base32);
            match fmt {
                Format::Json => {
                    output::json(&json!({"otpauth_uri": *uri, "secret_base32": *secret}))
                }
                Format::Human => output::print(&format!(
                    "Add this to your authenticator app now; it is shown only once:\n  {}\nsecret (base32): {}\n",
                    *uri, *secret
                )),
            }
        }
    }
}
