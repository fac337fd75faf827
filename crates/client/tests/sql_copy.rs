#![allow(clippy::unwrap_used)]

//! SQL on ordinary sessions against real PostgreSQL 15: extended-protocol queries with text
//! parameters, the pipeline (thousands of executions in one batch, an error in the middle, a
//! statement whose Parse failed), and COPY in both directions.

use walrelay_client::{connect_params, ClientError, Connection, Pipeline, ReplicationMode};
use walrelay_conninfo::{ConnectionConfig, MapEnv};
use walrelay_testkit::Cluster;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(pg: &Cluster) -> Connection {
    let cfg = ConnectionConfig::from_conninfo(&pg.conninfo(), &MapEnv::new()).unwrap();
    let params = connect_params(&cfg, ReplicationMode::Off, None).unwrap();
    Connection::connect(&params).await.unwrap()
}

#[test]
fn queries_pipelines_and_copy() {
    let pg = Cluster::builder().name("client-sql").start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text, n numeric)");
    rt().block_on(async {
        let mut c = connect(&pg).await;

        // Parameters are never quoted by hand, NULL is NULL, types are inferred.
        let r = c
            .query_params(
                "SELECT $1::text AS a, $2::int + 1 AS b, $3::text IS NULL AS c",
                &[Some("it's"), Some("41"), None],
            )
            .await
            .unwrap();
        assert_eq!(r.columns, ["a", "b", "c"]);
        assert_eq!(r.get(0, "a"), Some("it's"));
        assert_eq!(r.get(0, "b"), Some("42"));
        assert_eq!(r.get(0, "c"), Some("t"));
        let err = c.query_params("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("22012"));
        // The session is usable after an error.
        assert_eq!(
            c.execute_params("INSERT INTO t VALUES ($1, $2)", &[Some("0"), Some("x")])
                .await
                .unwrap(),
            1
        );

        // A pipeline of 5000 inserts in one transaction: bounded memory, one Sync.
        let mut p = Pipeline::new(c);
        p.execute("BEGIN", []).await.unwrap();
        for i in 1..=5000 {
            let id = i.to_string();
            let v = format!("v{i}");
            p.execute(
                "INSERT INTO t (id, v, n) VALUES ($1, $2, $3)",
                [Some(id.as_bytes()), Some(v.as_bytes()), None],
            )
            .await
            .unwrap();
        }
        p.execute(
            "UPDATE t SET n = $1 WHERE id > $2",
            [Some(&b"1.5"[..]), Some(&b"4990"[..])],
        )
        .await
        .unwrap();
        p.execute("DELETE FROM t WHERE id = $1", [Some(&b"-7"[..])])
            .await
            .unwrap();
        p.execute("SELECT count(*) FROM t WHERE n IS NOT NULL", [])
            .await
            .unwrap();
        p.execute("COMMIT", []).await.unwrap();
        let batch = p.sync().await.unwrap();
        assert_eq!(batch.executions, 5005);
        assert_eq!(batch.unmatched, 1, "the DELETE of a missing row");
        assert_eq!(
            batch.rows_affected,
            5000 + 10 + 1,
            "inserts, update, one row selected"
        );
        assert_eq!(batch.rows, [vec![Some(bytes::Bytes::from_static(b"10"))]]);
        assert_eq!(p.prepared_statements(), 6);
        assert!(!p.connection().in_transaction());

        // An error in the middle: the batch fails as a whole, the transaction is failed, and a
        // statement whose Parse was skipped is prepared again next time.
        p.execute("BEGIN", []).await.unwrap();
        p.execute("INSERT INTO t (id) VALUES ($1)", [Some(&b"1"[..])])
            .await
            .unwrap();
        p.execute("DELETE FROM t WHERE id = $1", [Some(&b"2"[..])])
            .await
            .unwrap();
        let e = p.sync().await.unwrap_err();
        assert_eq!(e.sqlstate(), Some("23505"), "{e}");
        assert!(p.connection().in_transaction());
        p.connection().batch_execute("ROLLBACK").await.unwrap();
        p.execute("DELETE FROM t WHERE id = $1", [Some(&b"2"[..])])
            .await
            .unwrap();
        let b = p.sync().await.unwrap();
        assert_eq!((b.rows_affected, b.unmatched), (1, 0));

        // An error among the answers read early in a long batch (more than the unread limit):
        // the executions queued after it are neither sent nor awaited, and the Sync returns the
        // server's error, not a confused pipeline.
        p.execute("BEGIN", []).await.unwrap();
        p.execute("INSERT INTO t (id) VALUES ($1)", [Some(&b"1"[..])])
            .await
            .unwrap();
        for i in 10_001..=13_000 {
            let id = i.to_string();
            p.execute("INSERT INTO t (id) VALUES ($1)", [Some(id.as_bytes())])
                .await
                .unwrap();
        }
        p.execute("COMMIT", []).await.unwrap();
        let e = p.sync().await.unwrap_err();
        assert_eq!(e.sqlstate(), Some("23505"), "{e}");
        p.connection().batch_execute("ROLLBACK").await.unwrap();
        let b = p.sync().await.unwrap();
        assert_eq!(b.executions, 0, "the failed batch left nothing behind");
        p.execute(
            "SELECT count(*) FROM t WHERE id > $1",
            [Some(&b"10000"[..])],
        )
        .await
        .unwrap();
        let b = p.sync().await.unwrap();
        assert_eq!(b.rows, [vec![Some(bytes::Bytes::from_static(b"0"))]]);
        let mut c = p.into_inner();

        // COPY out of one session into another table, in chunks that cut rows apart.
        c.batch_execute("CREATE TABLE t2 (LIKE t)").await.unwrap();
        c.copy_out("COPY t TO STDOUT").await.unwrap();
        let mut all = Vec::new();
        while let Some(chunk) = c.copy_out_next().await.unwrap() {
            all.extend_from_slice(&chunk);
        }
        let mut c2 = connect(&pg).await;
        c2.copy_in("COPY t2 FROM STDIN").await.unwrap();
        for piece in all.chunks(777) {
            c2.copy_in_send(piece).await.unwrap();
        }
        assert_eq!(c2.copy_in_finish().await.unwrap(), 5000);
        // Bad data is reported at the end, and the session stays usable.
        c2.copy_in("COPY t2 FROM STDIN").await.unwrap();
        c2.copy_in_send(b"not-a-number\tx\t\\N\n").await.unwrap();
        let e = c2.copy_in_finish().await.unwrap_err();
        assert_eq!(e.sqlstate(), Some("22P02"), "{e}");
        c2.copy_in("COPY t2 FROM STDIN").await.unwrap();
        c2.copy_in_fail("changed my mind").await.unwrap();
        let e = c2.copy_out("COPY nosuchtable TO STDOUT").await.unwrap_err();
        assert!(matches!(e, ClientError::Server(_)), "{e}");
        let r = c2.simple_query("SELECT count(*) FROM t2").await.unwrap();
        assert_eq!(r[0].get_idx(0, 0), Some("5000"));
    });
    assert_eq!(
        pg.psql("SELECT count(*) FROM t EXCEPT SELECT count(*) FROM t2"),
        ""
    );
}
