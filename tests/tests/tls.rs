//! TLS to PostgreSQL with libpq's sslmode meanings, against a real server with
//! `ssl = on` and a CA and server certificate made here (openssl), for pgproof's own
//! connections and for pg_dump/pg_restore through a full backup and verify.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use pgproof_core::pg::ConnParams;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::{Workspace, missing_service, stderr};

/// A cluster listening on 127.0.0.1 with TLS on, whose certificate (signed by the CA
/// in `ca.crt`) names `localhost` only; plain TCP connections are rejected.
struct TlsServer {
    cluster: EphemeralCluster,
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A CA and a certificate it signed for `name` (`server` or `client`) with `subject`
/// and `extensions`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=pgproof test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
        ]);
        openssl(dir, &args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=postgres")] {
        let mut args = vec!["req"];
        args.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

fn start_tls_server() -> Option<TlsServer> {
    if Command::new("openssl").arg("version").output().is_err() {
        missing_service("openssl (to make test certificates)");
        return None;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let cluster = match EphemeralCluster::start_listening(None, Some(port)) {
        Ok(c) => c,
        Err(e) => {
            missing_service(&format!("PostgreSQL ({e})"));
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    // The server reads its files as its own user, and wants its key private.
    let data = cluster.data_directory();
    for file in ["server.crt", "server.key", "ca.crt"] {
        let to = data.join(file);
        std::fs::copy(dir.path().join(file), &to).unwrap();
        if let Some(user) = cluster.run_as() {
            let ok = Command::new("chown").arg(user).arg(&to).status().unwrap();
            assert!(ok.success());
        }
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = cluster.params("postgres").unwrap().connect().await.unwrap();
        for statement in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl_ca_file = 'ca.crt'",
        ] {
            admin.batch_execute(statement).await.unwrap();
        }
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        admin.batch_execute("CREATE DATABASE app").await.unwrap();
        let app = cluster.params("app").unwrap().connect().await.unwrap();
        app.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g",
        )
        .await
        .unwrap();
    });
    // The reload is asynchronous: wait until TLS is served.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some(TlsServer { cluster, dir })
}

impl TlsServer {
    fn url(&self, host: &str, options: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/app?connect_timeout=5&{options}",
            self.cluster.port()
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Whether a connection with these options works, and if so whether it is TLS.
async fn try_connect(url: &str) -> Result<bool, String> {
    let params = ConnParams::parse_with_env(url, |_| None).map_err(|e| e.to_string())?;
    let client = params.connect().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[test]
fn sslmodes_pass_and_fail_as_libpqs_do() {
    let Some(server) = start_tls_server() else {
        return;
    };
    let ca = server.file("ca.crt");
    let other_ca = server.file("other-ca.crt");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ok = |opts: &str, host: &str| {
            let url = server.url(host, opts);
            async move { try_connect(&url).await }
        };
        // Encrypted and accepted.
        for (opts, host) in [
            ("sslmode=require".to_owned(), "127.0.0.1"),
            ("sslmode=prefer".to_owned(), "127.0.0.1"),
            ("sslmode=allow".to_owned(), "127.0.0.1"),
            (format!("sslmode=verify-ca&sslrootcert={ca}"), "127.0.0.1"),
            (format!("sslmode=verify-full&sslrootcert={ca}"), "localhost"),
            (format!("sslmode=require&sslrootcert={ca}"), "127.0.0.1"),
        ] {
            assert_eq!(ok(&opts, host).await, Ok(true), "{opts} to {host}");
        }
        // Refused, each with a line that says why.
        let err = ok("sslmode=disable", "127.0.0.1").await.unwrap_err();
        assert!(
            err.contains("pg_hba.conf") || err.contains("rejects"),
            "{err}"
        );
        let err = ok(
            &format!("sslmode=verify-full&sslrootcert={ca}"),
            "127.0.0.1",
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("certificate") && err.contains("sslrootcert"),
            "wrong host: {err}"
        );
        let err = ok(
            &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
            "localhost",
        )
        .await
        .unwrap_err();
        assert!(err.contains("certificate"), "wrong CA: {err}");
        let err = ok(
            &format!("sslmode=require&sslrootcert={other_ca}"),
            "localhost",
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("certificate"),
            "require with a root verifies: {err}"
        );
        let err = ok("sslmode=verify-full", "localhost").await.unwrap_err();
        assert!(err.contains("sslrootcert"), "no root given: {err}");
        let err = ok(
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "localhost",
        )
        .await
        .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        // A client certificate is presented when asked for.
        let cert = server.file("client.crt");
        let key = server.file("client.key");
        assert_eq!(
            ok(
                &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
                "localhost"
            )
            .await,
            Ok(true)
        );
    });
}

/// A TLS-only server: pgproof's own connections and pg_dump/pg_restore all connect
/// with verify-full (plain TCP is rejected by pg_hba), from the URL or from the
/// config's [source] keys.
#[test]
fn backup_and_verify_over_verify_full() {
    let Some(server) = start_tls_server() else {
        return;
    };
    let ca = server.file("ca.crt");
    let ws = Workspace::new(&server.cluster, "app", "custom");
    ws.verify_on(&server.cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let tls_url = server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    ws.write_config(&config.replace(&server.cluster.url("app"), &tls_url));
    let manifest = ws.backup();
    assert_eq!(manifest["fingerprint"]["tables"]["public.t"]["rows"], 500);
    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The same from [source] keys, with a wrong CA: refused before pg_dump runs.
    let plain_url = server.url("localhost", "");
    ws.write_config(
        &config
            .replace(&server.cluster.url("app"), &plain_url)
            .replace(
                "[source]\n",
                &format!(
                    "[source]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
                    server.file("other-ca.crt")
                ),
            ),
    );
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("certificate"), "{err}");
    ws.write_config(
        &config
            .replace(&server.cluster.url("app"), &plain_url)
            .replace(
                "[source]\n",
                &format!("[source]\nsslmode = \"verify-full\"\nsslrootcert = \"{ca}\"\n"),
            ),
    );
    ws.backup();
}
