//! nats-server configurations that authenticate the way production does, with the
//! keys made at test time: TLS with a required client certificate, nkey users, and
//! operator mode with a credentials file (operator, account and user JWTs).
//!
//! nats-jwt signs user JWTs; it has no operator JWT and no JetStream limits for
//! accounts, which operator mode needs for the writer's streams, so those two are
//! written here with the same encoding (`{"typ":"JWT","alg":"ed25519-nkey"}`,
//! base64url without padding, an ed25519 signature by the issuer's nkey).

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde_json::json;
use testkit::pki::TestPki;

/// `tls { ... verify: true }`: clients must present a certificate `pki`'s CA signed.
pub fn tls_config(pki: &TestPki) -> String {
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
        pki.server.cert, pki.server.key, pki.ca
    )
}

/// One nkey user, `user`; nothing else may connect.
pub fn nkey_config(user: &KeyPair) -> String {
    format!(
        "authorization {{\n  users = [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    )
}

/// A user of the operator-mode server: its JWT and seed, as a credentials file holds them.
pub struct Creds {
    pub jwt: String,
    pub seed: String,
}

impl Creds {
    /// The file format `nsc` writes and async-nats reads.
    pub fn file_text(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            self.jwt, self.seed
        )
    }
}

/// An operator with a system account and one account with JetStream, preloaded into a
/// memory resolver.
pub struct Operator {
    pub config: String,
    account: KeyPair,
}

impl Operator {
    pub fn new() -> anyhow::Result<Operator> {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "ponix-test-operator",
            json!({
                "type": "operator",
                "version": 2,
                "system_account": system.public_key(),
            }),
        )?;
        let unlimited = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
        });
        let mut jetstream = unlimited.clone();
        for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
            jetstream[limit] = json!(-1);
        }
        let account_claims = |limits| {
            json!({
                "type": "account",
                "version": 2,
                "limits": limits,
                "default_permissions": { "pub": {}, "sub": {} },
            })
        };
        let system_jwt = sign(
            &operator,
            &system.public_key(),
            "SYS",
            account_claims(unlimited),
        )?;
        let account_jwt = sign(
            &operator,
            &account.public_key(),
            "writers",
            account_claims(jetstream),
        )?;
        let config = format!(
            "operator: {operator_jwt:?}\nsystem_account: {:?}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {system_jwt:?}\n  {}: {account_jwt:?}\n}}\n",
            system.public_key(),
            system.public_key(),
            account.public_key(),
        );
        Ok(Operator { config, account })
    }

    /// A new user of the JetStream account.
    pub fn user(&self, name: &str) -> anyhow::Result<Creds> {
        user_of(&self.account, name)
    }
}

/// A user signed by `account`, which the server may or may not know.
pub fn user_of(account: &KeyPair, name: &str) -> anyhow::Result<Creds> {
    let user = KeyPair::new_user();
    let jwt = nats_jwt::Token::new_user(account.public_key(), user.public_key())
        .name(name)
        .sign(account);
    Ok(Creds {
        jwt,
        seed: user.seed()?,
    })
}

fn sign(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> anyhow::Result<String> {
    let issued_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({
        // Unique per JWT; the server does not check how it was made.
        "jti": BASE64URL_NOPAD.encode(format!("{subject}-{issued_at}").as_bytes()),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}
