//! One database per service, made for the run and dropped after it.

use std::collections::BTreeMap;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use url::Url;

use super::saga::Service;
use super::schema;

/// The run's four databases.
#[derive(Debug)]
pub struct DemoDatabases {
    admin: PgPool,
    names: BTreeMap<Service, String>,
    urls: BTreeMap<Service, Url>,
    pools: BTreeMap<Service, PgPool>,
}

impl DemoDatabases {
    /// Creates `{prefix}_{service}` for each service on the server of `server_url`,
    /// with the toolkit's tables and the service's own.
    pub async fn create(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server_url)
            .await?;
        let mut databases = Self {
            admin,
            names: BTreeMap::new(),
            urls: BTreeMap::new(),
            pools: BTreeMap::new(),
        };
        for service in Service::ALL {
            let name = format!("{prefix}_{service}");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&databases.admin)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&databases.admin)
                .await?;
            databases.names.insert(service, name.clone());
            let url = with_database(server_url, &name)?;
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(url.as_str())
                .await?;
            schema::prepare(&pool, service).await?;
            databases.urls.insert(service, url);
            databases.pools.insert(service, pool);
        }
        Ok(databases)
    }

    /// The URL of a service's database (a secret: pass it in the environment).
    pub fn url(&self, service: Service) -> &Url {
        &self.urls[&service]
    }

    /// A small pool on a service's database, for progress and the verifier.
    pub fn pool(&self, service: Service) -> &PgPool {
        &self.pools[&service]
    }

    /// A service's database's name.
    pub fn name(&self, service: Service) -> &str {
        &self.names[&service]
    }

    /// The databases' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(String::as_str)
    }

    /// The console's list of the four databases (`name=url`, one a line): a secret,
    /// since the URLs may hold a password.
    pub fn console_entries(&self) -> String {
        self.urls
            .iter()
            .map(|(service, url)| format!("{service}={url}\n"))
            .collect()
    }

    /// Drops the four databases.
    pub async fn drop_all(self) -> anyhow::Result<()> {
        for pool in self.pools.values() {
            pool.close().await;
        }
        for name in self.names.values() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&self.admin)
            .await?;
        }
        Ok(())
    }
}

/// `server_url` with its database replaced by `name`, query string kept.
pub(crate) fn with_database(server_url: &str, name: &str) -> anyhow::Result<Url> {
    let mut url = Url::parse(server_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_swapped_and_the_rest_kept() {
        let url = with_database(
            "postgres://app:secret@db.example:6432/postgres?sslmode=require",
            "eod_1_order",
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "postgres://app:secret@db.example:6432/eod_1_order?sslmode=require"
        );
        let bare = with_database("postgres://postgres@127.0.0.1", "x").unwrap();
        assert_eq!(bare.as_str(), "postgres://postgres@127.0.0.1/x");
    }
}
