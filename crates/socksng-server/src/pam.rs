//! Password logins checked by PAM (`auth.pam_service`): the system's users, with whatever
//! the service's stack says (pam_unix, LDAP, SSSD, lockout modules), as Dante's `pam.servicename`
//! does. Each check runs `pam_authenticate` and `pam_acct_mgmt` (an expired or locked account
//! is refused) on the bounded blocking pool password checks use; no session is opened.

/// A PAM service to check passwords with.
#[derive(Debug)]
pub struct PamAccounts {
    service: String,
}

impl PamAccounts {
    /// Checks against `/etc/pam.d/<service>` (PAM's `other` when it is missing).
    pub fn new(service: &str) -> PamAccounts {
        PamAccounts {
            service: service.to_owned(),
        }
    }

    /// Whether `password` is `name`'s and the account may log in now. Blocking: PAM modules
    /// may sleep (pam_faildelay) or ask a directory server.
    pub fn verify(&self, name: &str, password: &[u8]) -> bool {
        // PAM takes C strings: a NUL would cut the password short.
        let Ok(password) = std::str::from_utf8(password) else {
            return false;
        };
        if password.contains('\0') || name.contains('\0') {
            return false;
        }
        let mut auth = match pam::Authenticator::with_password(&self.service) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(service = %self.service, error = %e, "PAM: cannot start a transaction");
                return false;
            }
        };
        auth.get_handler().set_credentials(name, password);
        match auth.authenticate() {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(user = name, error = %e, "PAM refused the login");
                false
            }
        }
    }
}
