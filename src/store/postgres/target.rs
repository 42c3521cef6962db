//! Where a database is, for messages: `host:port/database`, never the user's password.

use std::fmt;

use tokio_postgres::config::Host;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    /// The first host, port and database of `config`, with libpq's defaults for what the URL
    /// leaves out.
    pub fn of(config: &tokio_postgres::Config) -> Target {
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            #[cfg(unix)]
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        Target(format!("{host}:{port}/{database}"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_host_port_and_database_but_not_the_password() {
        let config: tokio_postgres::Config =
            "postgres://app:hunter2@db.example.com:6543/notirouter"
                .parse()
                .unwrap();
        let target = Target::of(&config).to_string();
        assert_eq!(target, "db.example.com:6543/notirouter");
        let defaults: tokio_postgres::Config = "postgres://app@db".parse().unwrap();
        assert_eq!(Target::of(&defaults).to_string(), "db:5432/app");
    }
}
