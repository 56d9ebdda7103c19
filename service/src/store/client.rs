//! The clickhouse-rs client every ClickHouse query goes through: a
//! hyper connector that speaks TLS with the configured [`ClientTls`] for `https://`
//! URLs, because the crate's own TLS would trust only the platform's roots and present
//! no client certificate.
//!
//! [`ClientTls`]: crate::tls::ClientTls

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::ClickHouseConfig;

/// How long the client keeps a TCP connection alive, as clickhouse-rs does by default.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Less than ClickHouse's keep-alive timeout (3 s before 23.11, 10 s since), as
/// clickhouse-rs' own client, so that an idle connection is not reused as it closes.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A clickhouse-rs client for `config`'s URL and credentials, speaking TLS with
/// `config.tls` for an `https://` URL. Settings are the caller's.
pub fn clickhouse_client(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let builder = {
        let mut builder = HyperClient::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
        builder
    };
    let client = match &config.tls {
        None => clickhouse::Client::with_http_client(builder.build(http)),
        Some(tls) => {
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.rustls_config())
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            clickhouse::Client::with_http_client(builder.build(https))
        }
    };
    client
        .with_url(config.url.as_str())
        .with_user(config.username.as_str())
        .with_password(config.password.expose())
        .with_database(config.database.as_str())
}
