//! `demo-workload --endpoint http://127.0.0.1:PORT --database demo [--rows N] [--seconds S]`:
//! loads sample collections into a Milvus and then runs a mixed workload of
//! inserts, upserts and deletes (used by the local demo, deploy/local/up.sh).

use std::time::{Duration, Instant};

use anyhow::Result;
use dr_agent::milvus::{Connection, Milvus, PkType};
use dr_tests::data::{self, Shape};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let endpoint = arg("--endpoint").ok_or_else(|| anyhow::anyhow!("--endpoint is required"))?;
    let db = arg("--database").unwrap_or_else(|| "demo".into());
    let rows: i64 = arg("--rows")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(20_000);
    let seconds: u64 = arg("--seconds")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(10);
    let m = Milvus::connect(Connection {
        endpoint,
        health_url: None,
        authorization: None,
        request_timeout: Duration::from_secs(60),
    })?;
    let products = Shape::Simple { dim: 64 };
    let docs = Shape::AllTypes {
        pk: PkType::Str,
        binary: false,
    };
    if !m.list_databases().await?.contains(&db) {
        m.create_database(&db).await?;
    }
    let have = m.list_collections(&db).await?;
    if !have.contains(&"products".to_string()) {
        data::create(&m, &db, "products", products).await?;
        data::insert(
            &m,
            &db,
            "products",
            products,
            &(0..rows).collect::<Vec<_>>(),
            1,
        )
        .await?;
        println!("loaded {db}.products: {rows} rows, 64-d vectors");
    }
    if !have.contains(&"docs".to_string()) {
        data::create(&m, &db, "docs", docs).await?;
        data::insert(&m, &db, "docs", docs, &(0..2000).collect::<Vec<_>>(), 1).await?;
        println!("loaded {db}.docs: 2000 rows, every field type, VarChar keys");
    }
    let start = Instant::now();
    // New keys from the wall clock: a later run (after a failover, on the
    // other datacenter) never inserts a key an earlier run inserted.
    let mut next = rows.max(dr_proto::now_ms());
    let mut round = 0u32;
    let mut writes = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        let ins: Vec<i64> = (next..next + 50).collect();
        next += 50;
        let base = (round as i64 * 37) % (rows - 100).max(1);
        data::insert(&m, &db, "products", products, &ins, 1).await?;
        data::upsert(
            &m,
            &db,
            "products",
            products,
            &(base..base + 50).collect::<Vec<_>>(),
            1 + round,
        )
        .await?;
        data::delete(
            &m,
            &db,
            "products",
            products,
            &(base + 50..base + 60).collect::<Vec<_>>(),
        )
        .await?;
        data::upsert(&m, &db, "docs", docs, &[(round as i64) % 2000], round).await?;
        writes += 111;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("mixed workload: {writes} writes in {seconds} s (inserts, upserts, deletes)");
    Ok(())
}
