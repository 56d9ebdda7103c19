//! `testkit::infra::Managed` on the backend `PONIX_TEST_BACKEND` chooses (local
//! processes, testcontainers or compose): each fault takes the instance away and the
//! guard brings it back on the same port with its data, as the fault tests and the
//! drills rely on. Run under e2e on the local backend, and by hand with
//! `PONIX_TEST_BACKEND=containers` or `compose`.

use anyhow::{Context, ensure};
use testkit::Endpoints;
use testkit::infra::{Backend, Managed};
use testkit::localenv::net::{http_get, http_post, nats_jetstream_ready};

testkit::integration_tests!(
    clickhouse_keeps_its_port_and_data_through_stop_kill_and_freeze,
    nats_with_a_configuration_comes_back_after_a_kill,
);

fn blocking<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    tokio::task::block_in_place(f)
}

fn query(port: u16, sql: &str) -> anyhow::Result<String> {
    let response = http_post(port, "/", sql)?;
    ensure!(
        response.status == 200,
        "{sql}: {} {}",
        response.status,
        response.body
    );
    Ok(response.body.trim().to_owned())
}

async fn clickhouse_keeps_its_port_and_data_through_stop_kill_and_freeze(
    _endpoints: Endpoints,
) -> anyhow::Result<()> {
    let mut clickhouse = blocking(Managed::private_clickhouse)?;
    ensure!(clickhouse.backend() == Backend::from_env()?);
    let port = clickhouse.port();
    ensure!(clickhouse.url() == format!("http://127.0.0.1:{port}"));
    // The database the tests and drills expect, as user `default` without password.
    query(
        port,
        "CREATE TABLE ponix.t (n UInt32) ENGINE = MergeTree ORDER BY n",
    )?;
    query(port, "INSERT INTO ponix.t VALUES (1), (2), (3)")?;

    let first = clickhouse.pid();
    let stopped = blocking(|| clickhouse.stop())?;
    ensure!(
        http_get(port, "/ping").is_err(),
        "ClickHouse still answers after stop"
    );
    blocking(|| stopped.start())?;
    let second = clickhouse.pid();
    ensure!(second != first, "stop/start kept pid {first}");
    ensure!(
        query(port, "SELECT count() FROM ponix.t")? == "3",
        "the rows did not survive stop/start"
    );

    let killed = blocking(|| clickhouse.kill())?;
    ensure!(
        http_get(port, "/ping").is_err(),
        "ClickHouse still answers after kill"
    );
    // The guard starts it again when dropped.
    drop(killed);
    ensure!(
        clickhouse.pid() != second,
        "kill and start kept pid {second}"
    );
    ensure!(
        query(port, "SELECT count() FROM ponix.t")? == "3",
        "the rows did not survive the kill"
    );

    {
        let _frozen = clickhouse.freeze()?;
        // Frozen, it keeps its socket but answers nothing: the probe's read times out.
        ensure!(
            http_get(port, "/ping").is_err(),
            "ClickHouse answers while frozen"
        );
    }
    ensure!(
        query(port, "SELECT 1")? == "1",
        "ClickHouse does not answer after resuming"
    );
    ensure!(!clickhouse.log_tail(50).is_empty(), "no log");
    Ok(())
}

async fn nats_with_a_configuration_comes_back_after_a_kill(
    _endpoints: Endpoints,
) -> anyhow::Result<()> {
    // A user only the configuration file defines; the probe gets no_auth_user.
    let mut nats = blocking(|| {
        Managed::private_nats_with_config(
            "authorization { users = [ { user: \"w\", password: \"secret-w\" } ] }\nno_auth_user: \"w\"\n",
        )
    })?;
    let port = nats.port();
    let client = async_nats::ConnectOptions::with_user_and_password("w".into(), "secret-w".into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .context("connecting with the configured user")?;
    let wrong = async_nats::ConnectOptions::with_user_and_password("w".into(), "wrong".into())
        .connect(format!("127.0.0.1:{port}"))
        .await;
    ensure!(
        wrong.is_err(),
        "the configuration file was not applied: a wrong password connected"
    );
    drop(client);

    let pid = nats.pid();
    blocking(|| nats.kill()?.start())?;
    ensure!(nats.pid() != pid, "kill and start kept pid {pid}");
    blocking(|| nats_jetstream_ready(port)).context("JetStream after the restart")?;
    blocking(|| nats.restart())?;
    blocking(|| nats_jetstream_ready(port)).context("JetStream after restart()")?;
    Ok(())
}
