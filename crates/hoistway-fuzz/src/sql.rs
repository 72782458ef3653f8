//! The SQL guard: what stands between a reader's text and the data. Every statement from
//! `POST /v1/sql`, the PostgreSQL endpoint and Flight SQL is planned by [`QueryEngine`] under
//! DataFusion's read-only options; the PostgreSQL endpoint first parses in PostgreSQL's dialect
//! and rewrites what clients send to their catalogs ([`hoistway_pgwire::plan_query`]).
//!
//! The engine is opened once per process over empty stores in a scratch directory; planning
//! reads no data, so an empty engine plans exactly what a full one would.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use hoistway_model::{Clock, SystemClock};
use hoistway_query::{Caller, QueryEngine, QueryLimits};
use hoistway_store::{Store, StoreConfig, TierStore};

struct Guard {
    runtime: tokio::runtime::Runtime,
    engine: QueryEngine,
}

/// Scratch directories are named by process, so that parallel fuzzers do not share one; those
/// of processes that have ended are removed when a new one starts.
const SCRATCH_PREFIX: &str = "hoistway-fuzz-sql-";

fn scratch() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn open() -> Guard {
    let dir = scratch();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = runtime.block_on(async {
        let config = StoreConfig::new(
            TierStore::local(dir.join("hot")).expect("hot tier"),
            TierStore::local(dir.join("archive")).expect("archive tier"),
        );
        let store = Arc::new(
            Store::open(config, clock.clone())
                .await
                .expect("an empty store"),
        );
        let registry = Arc::new(
            hoistway_registry::Registry::open(dir.join("registry.sqlite3")).expect("registry"),
        );
        let fleet = hoistway_processor::Fleet::new(
            Default::default(),
            registry,
            clock.clone(),
            Duration::from_secs(60),
        );
        let auth_store =
            hoistway_auth::SqliteAuthStore::open(&dir.join("auth.sqlite3")).expect("auth store");
        let authority = hoistway_auth::Authority::open(
            Arc::new(auth_store),
            Arc::new(hoistway_auth::FileKeyStore::new(&dir.join("keys.json"))),
            clock,
            Default::default(),
        )
        .expect("authority");
        let alerts =
            hoistway_alerts::SqliteAlertStore::open(&dir.join("alerts.sqlite3")).expect("alerts");
        QueryEngine::new(store, fleet, QueryLimits::default())
            .expect("an engine")
            .with_audit(Arc::new(authority))
            .with_alerts(Arc::new(alerts))
    });
    Guard { runtime, engine }
}

/// A statement. The first byte picks who sends it (bits 0–1: the lift maker's admin, its
/// staff, a customer's user) and how (bit 2: the PostgreSQL endpoint, else `POST /v1/sql`);
/// the rest is the SQL. Whatever the guard lets through must plan to nothing that writes,
/// defines or changes anything.
pub fn sql_guard(data: &[u8]) {
    let Some((&how, sql)) = data.split_first() else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let caller = match how & 3 {
        0 => Caller::fleet_admin(),
        1 => Caller {
            customer: None,
            admin: false,
        },
        _ => Caller {
            customer: Some("acme".into()),
            admin: how & 1 == 1,
        },
    };
    static GUARD: OnceLock<Guard> = OnceLock::new();
    let guard = GUARD.get_or_init(open);
    guard.runtime.block_on(async {
        if how & 4 == 0 {
            if let Ok(df) = guard.engine.plan(sql, &caller).await {
                assert_read_only(df.logical_plan(), sql);
            }
        } else if let Ok(planned) = hoistway_pgwire::plan_query(&guard.engine, sql, &caller).await {
            for p in planned {
                if let hoistway_pgwire::Planned::Query(df) = p {
                    assert_read_only(df.logical_plan(), sql);
                }
            }
        }
    });
}

/// Panics if any node of `plan`, subqueries included, would write, define or change state.
fn assert_read_only(plan: &LogicalPlan, sql: &str) {
    plan.apply_with_subqueries(|node| {
        let writes = matches!(
            node,
            LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
        );
        assert!(!writes, "the guard let through {node:?} from {sql:?}");
        Ok(TreeNodeRecursion::Continue)
    })
    .expect("the walk itself never fails");
}
