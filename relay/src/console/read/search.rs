//! Finding a saga by its id or the start of it, in every service.
//!
//! A prefix reads the tables that index the saga id by prefix whatever the
//! collation (`inbox_by_saga`, `saga_instance_by_prefix`, both `text_pattern_ops`)
//! and the dead letters; the outbox is searched by an exact id only, so that a busy
//! outbox gains no index for it.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use super::missing::or_none;
use crate::console::services::{Service, unreadable};

/// Ids listed for a prefix.
pub(crate) const MATCHES_SHOWN: i64 = 50;

/// A saga id that matched, and the services that know it.
#[derive(Debug, Serialize)]
pub(crate) struct Match {
    pub(crate) saga_id: String,
    pub(crate) services: Vec<String>,
}

/// The saga ids starting with `prefix` (an exact id is its own first match), each
/// with the services that have a record of it; and the services that could not be
/// read, so that "no match" is not mistaken for "not there".
pub(crate) async fn by_prefix(services: &[Service], prefix: &str) -> (Vec<Match>, Vec<String>) {
    let reads = services
        .iter()
        .map(|service| async move { (service, ids_in(&service.pool, prefix).await) });
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (service, ids) in futures_util::future::join_all(reads).await {
        match ids {
            Ok(ids) => {
                for id in ids {
                    found.entry(id).or_default().push(service.name.clone());
                }
            }
            Err(error) => errors.push(format!("{}: {}", service.name, unreadable(&error))),
        }
    }
    let matches = found
        .into_iter()
        .take(MATCHES_SHOWN as usize)
        .map(|(saga_id, services)| Match { saga_id, services })
        .collect();
    (matches, errors)
}

/// The ids one service knows that start with `prefix`, the exact one included.
async fn ids_in(pool: &PgPool, prefix: &str) -> sqlx::Result<Vec<String>> {
    let mut ids = matches_in(pool, prefix).await?;
    if exact_in(pool, prefix).await? {
        ids.push(prefix.to_owned());
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// `LIKE 'prefix%'` with the prefix's own `%`, `_` and `\` taken literally.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

async fn matches_in(pool: &PgPool, prefix: &str) -> sqlx::Result<Vec<String>> {
    let pattern = like_prefix(prefix);
    let mut ids = Vec::new();
    for sql in [
        "SELECT DISTINCT saga_id FROM (SELECT saga_id FROM inbox WHERE saga_id LIKE $1
             ORDER BY saga_id LIMIT $2 * 20) i LIMIT $2",
        "SELECT saga_id FROM saga_instance WHERE saga_id LIKE $1 ORDER BY saga_id LIMIT $2",
        "SELECT DISTINCT saga_id FROM inbox_dead_letter WHERE saga_id LIKE $1 LIMIT $2",
    ] {
        let found: Vec<String> = or_none(
            sqlx::query_scalar(sql)
                .bind(&pattern)
                .bind(MATCHES_SHOWN)
                .fetch_all(pool)
                .await,
        )?;
        ids.extend(found);
    }
    Ok(ids)
}

/// True when the outbox has the exact id (the one table not searched by prefix).
async fn exact_in(pool: &PgPool, saga_id: &str) -> sqlx::Result<bool> {
    or_none(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE saga_id = $1)")
            .bind(saga_id)
            .fetch_one(pool)
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn a_prefix_matches_its_own_wildcards_literally() {
        assert_eq!(like_prefix("order-1"), "order-1%");
        assert_eq!(like_prefix("50%_off\\"), "50\\%\\_off\\\\%");
    }
}
