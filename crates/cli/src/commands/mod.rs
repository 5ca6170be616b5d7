//! One file per subcommand; [`run`] dispatches.

mod backup;
mod certificate;
mod cluster;
mod drill;
mod list;
mod restore;
mod rolling;
mod setup;
mod status;
mod upkeep;
mod verify;

use std::path::Path;

use pgproof_core::Result;

use crate::args::{CertificateCommand, Cli, Command, ConfigCommand};
use crate::config::Config;
use crate::render::ProgressOutput;
use crate::settings::{self, FlagOverrides};

pub async fn run(cli: Cli) -> Result<()> {
    let mut flags = FlagOverrides {
        sink_url: cli.sink.clone(),
        ..FlagOverrides::default()
    };
    match &cli.command {
        Command::Backup { format, source, .. } => {
            flags.format = format.clone();
            flags.source_url = source.clone();
        }
        Command::Restore { identity, .. } | Command::Verify { identity, .. } => {
            flags.identity_file = identity.clone();
        }
        Command::Drill { format, .. } => flags.format = format.clone(),
        Command::Keygen {
            output,
            signing,
            comment,
        } => return setup::keygen(output, *signing, comment.as_deref()),
        Command::Migrate { url } => return setup::migrate(url).await,
        // Offline: no config, no sink.
        Command::Certificate {
            command: Some(CertificateCommand::Verify { file, keys, json }),
            ..
        } => return certificate::verify(file, keys, *json),
        _ => {}
    }
    let (config, file) = settings::load(cli.config.as_deref(), &flags)?;
    if let Some(file) = &file {
        tracing::debug!(file = %file.display(), "configuration file read");
    }
    let progress = ProgressOutput::new(&cli);
    operate(&config, file.as_deref(), cli.command, progress).await
}

/// The commands that back up, restore, verify and judge.
async fn operate(
    config: &Config,
    file: Option<&Path>,
    command: Command,
    progress: ProgressOutput,
) -> Result<()> {
    match command {
        Command::Backup {
            json,
            verify,
            prune,
            amcheck,
            ..
        } => {
            let options = backup::Options {
                json,
                then_verify: verify || config.verify.after_backup,
                amcheck,
                prune,
            };
            backup::backup(config, options, progress).await
        }
        Command::Prune {
            dry_run,
            database,
            json,
        } => upkeep::prune(config, database.as_deref(), dry_run, json).await,
        Command::Check {
            read_data,
            database,
            json,
        } => upkeep::check(config, database.as_deref(), read_data, json).await,
        Command::Status { json, prometheus } => {
            status::status(config, json, prometheus.as_deref()).await
        }
        Command::Verify {
            database,
            keep,
            json,
            tables_per_run,
            budget,
            ..
        } if tables_per_run.is_some() || budget.is_some() => {
            let share = rolling::Share {
                tables_per_run,
                budget: budget.as_deref(),
            };
            rolling::rolling(config, database.as_deref(), share, keep, json, &progress).await
        }
        Command::Verify {
            backup,
            all,
            stale,
            limit,
            worker,
            database,
            keep,
            adopt,
            json,
            ..
        } => {
            let which = verify::Which {
                backup: &backup,
                all,
                stale: stale.as_deref(),
                limit,
                worker,
                database: database.as_deref(),
            };
            verify::verify(config, which, adopt, keep, json, &progress).await
        }
        Command::Drill {
            rows,
            server,
            annotations,
            json,
            ..
        } => drill::drill(config, rows, server.as_deref(), annotations, json).await,
        Command::Restore {
            cluster: Some(run),
            target,
            tablespace_dirs,
            json,
            ..
        } => cluster::restore(config, &run, target.as_deref(), &tablespace_dirs, json).await,
        Command::Restore {
            backup,
            as_of,
            tables,
            schemas,
            exclude_tables,
            rename_to,
            target,
            database,
            clean,
            force,
            create_roles,
            create_privileged_roles,
            files,
            json,
            ..
        } => {
            let allow = restore::Allow {
                clean,
                force,
                create_roles,
                create_privileged_roles,
            };
            let which = match (&backup, &as_of) {
                (_, Some(time)) => restore::Which::AsOf(time),
                (Some(backup), None) => restore::Which::Backup(backup),
                (None, None) => restore::Which::Backup("latest"),
            };
            restore::restore(
                config,
                which,
                restore::Destination {
                    target: target.as_deref(),
                    files: files.as_deref(),
                    filter: restore::filter(&tables, &schemas, &exclude_tables)?,
                    rename_to,
                },
                database.as_deref(),
                allow,
                json,
                &progress,
            )
            .await
        }
        other => catalog(config, file, other).await,
    }
}

/// The commands that read or tend the catalog.
async fn catalog(config: &Config, file: Option<&Path>, command: Command) -> Result<()> {
    match command {
        Command::List {
            clusters: true,
            json,
            ..
        } => cluster::list(config, json).await,
        Command::List {
            database,
            json,
            hidden: false,
            ..
        } => list::list(config, database.as_deref(), json).await,
        Command::List {
            database,
            json,
            hidden: true,
            ..
        } => list::hidden(config, database.as_deref(), json).await,
        Command::Undelete { backup, database } => list::undelete(config, &backup, &database).await,
        Command::Copy {
            to,
            backup,
            database,
            json,
            ..
        } => upkeep::copy(config, &to, backup, database, json).await,
        Command::Pin {
            backup,
            database,
            until,
            note,
        } => list::pin(config, &backup, database.as_deref(), until.as_deref(), note).await,
        Command::Unpin { backup, database } => {
            list::unpin(config, &backup, database.as_deref()).await
        }
        Command::Show {
            backup,
            database,
            json,
        } => list::show(config, &backup, database.as_deref(), json).await,
        Command::Config {
            command: ConfigCommand::Check { json },
        } => setup::config_check(config, file, json).await,
        Command::Certificate {
            backup,
            database,
            since,
            out,
            ..
        } => {
            certificate::issue(
                config,
                &backup,
                database.as_deref(),
                since.as_deref(),
                out.as_deref(),
            )
            .await
        }
        // Handled before any config is read; never reach here.
        _ => Ok(()),
    }
}
