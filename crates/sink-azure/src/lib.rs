//! pgproof-sink-azure: a [`Sink`] on a container of an Azure Blob Storage account,
//! through [`object_store`]'s `MicrosoftAzure` client.
//!
//! `sink.url = "az://container/prefix"` (`azure://` works too); `[sink]` options
//! `account`, `endpoint`, `use_emulator`, `allow_http`, `part_size_mib`,
//! `parts_in_flight`, `max_retries`, `retry_timeout_secs`, `request_timeout_secs` and
//! `connect_timeout_secs` apply. The storage account is `sink.account`, else
//! `AZURE_STORAGE_ACCOUNT_NAME`. Credentials never come from the config or the URL:
//! [`from_config`] reads object_store's Azure environment — an account key
//! (`AZURE_STORAGE_ACCOUNT_KEY`), a SAS token (`AZURE_STORAGE_SAS_TOKEN`, also
//! `AZURE_STORAGE_SAS_KEY`), a bearer token (`AZURE_STORAGE_TOKEN`), a service
//! principal (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`), workload
//! identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`), the
//! Azure CLI (`AZURE_USE_AZURE_CLI=true`) — and otherwise uses the managed identity
//! of the VM, App Service or container (`IDENTITY_ENDPOINT`, `AZURE_MSI_ENDPOINT`,
//! `AZURE_CLIENT_ID` / `AZURE_OBJECT_ID` / `AZURE_MSI_RESOURCE_ID` to pick one).
//!
//! `sink.use_emulator = true` (or `AZURE_STORAGE_USE_EMULATOR=true`) points the sink
//! at Azurite: `sink.endpoint` (else `AZURITE_BLOB_STORAGE_URL`, else
//! `http://127.0.0.1:10000`) is Azurite's address, the account defaults to
//! `devstoreaccount1` and, without a credential in the environment, Azurite's published
//! development key is used.
//!
//! Uploads stream as block uploads (Put Block, then Put Block List) with bounded
//! memory, small objects and manifests are put with `If-None-Match: *`; see
//! [`pgproof_sink_object_store`] for the guarantees and their limits. One differs on
//! Azure: a block upload cannot be aborted. Its uncommitted blocks are never listed or
//! readable as a blob, and Azure discards them after 7 days (or when the blob name is
//! next committed).

use std::sync::Arc;

use object_store::ClientConfigKey;
pub use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use pgproof_core::error::{Error, Result};
use pgproof_sink_object_store::{
    Location, ObjectStoreSink, Service, SinkConfig, UploadOptions, check_endpoint,
};

/// The account Azurite serves by default.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's development key for [`EMULATOR_ACCOUNT`], published by Microsoft and
/// built into every Azurite: not a secret, and useless against Azure itself.
const EMULATOR_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where Azurite's blob service listens by default.
const EMULATOR_URL: &str = "http://127.0.0.1:10000";
/// Largest block Azure accepts (service versions from 2019-12-12 on).
pub const MAX_BLOCK_SIZE_MIB: u64 = 4000;

/// Opens the sink `config` describes, with the account and credentials from the
/// standard Azure environment (or the managed identity). No request is sent.
pub fn from_config(config: &SinkConfig) -> Result<ObjectStoreSink> {
    from_builder(config, MicrosoftAzureBuilder::from_env())
}

/// Like [`from_config`] on top of `builder`, which may carry credentials or client
/// settings of the caller's choice; the config's container, account, endpoint,
/// emulator setting, timeouts and retries override it. With `use_emulator`, a
/// credential counts only as an [`AzureConfigKey`] value (`AccessKey`, `SasKey`,
/// `Token`); without one, Azurite's development key is used.
pub fn from_builder(
    config: &SinkConfig,
    builder: MicrosoftAzureBuilder,
) -> Result<ObjectStoreSink> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| Error::config("sink.url is not set; write az://container/prefix"))?;
    let location = Location::parse(Service::Azure, url)?;
    for (set, key, applies) in [
        (config.region.is_some(), "sink.region", "s3://"),
        (config.path_style.is_some(), "sink.path_style", "s3://"),
        (
            config.service_account_file.is_some(),
            "sink.service_account_file",
            "gs://",
        ),
    ] {
        if set {
            return Err(Error::config(format!(
                "{key} applies to {applies} sinks only; remove it for {url} (Azure credentials come from AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or a managed identity)"
            )));
        }
    }
    if config.part_size_mib > MAX_BLOCK_SIZE_MIB {
        return Err(Error::config(format!(
            "sink.part_size_mib = {} is out of range for Azure, whose blocks hold at most {MAX_BLOCK_SIZE_MIB} MiB",
            config.part_size_mib
        )));
    }
    let options = UploadOptions::from_config(config);
    let emulator = config.use_emulator
        || builder
            .get_config_value(&AzureConfigKey::UseEmulator)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let account = config
        .account
        .clone()
        .or_else(|| builder.get_config_value(&AzureConfigKey::AccountName))
        .filter(|a| !a.is_empty());
    let mut builder = builder
        .with_container_name(&location.bucket)
        .with_retry(options.retry_config())
        .with_http_connector(pgproof_sink_object_store::Transport)
        .with_config(
            AzureConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}s", options.request_timeout.as_secs()),
        )
        .with_config(
            AzureConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}s", options.connect_timeout.as_secs()),
        );
    let endpoint = if emulator {
        // object_store's own emulator mode ignores sink.endpoint (it reads only
        // AZURITE_BLOB_STORAGE_URL); the same requests, built here, honour it.
        let account = account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned());
        check_account(&account)?;
        let base = match &config.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => std::env::var("AZURITE_BLOB_STORAGE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| EMULATOR_URL.to_owned()),
        };
        check_endpoint(&base, true)?;
        let base = base.trim_end_matches('/');
        let base = base
            .strip_suffix(&format!("/{account}"))
            .unwrap_or(base)
            .to_owned();
        let has_credential = [
            AzureConfigKey::AccessKey,
            AzureConfigKey::SasKey,
            AzureConfigKey::Token,
        ]
        .iter()
        .any(|key| builder.get_config_value(key).is_some());
        builder = builder
            .with_use_emulator(false)
            .with_account(&account)
            .with_endpoint(format!("{base}/{account}"))
            .with_allow_http(true);
        if !has_credential {
            builder = builder.with_access_key(EMULATOR_ACCOUNT_KEY);
        }
        format!("{base}/{account}")
    } else {
        let Some(account) = account else {
            return Err(Error::config(format!(
                "no Azure storage account for {url}: set sink.account or AZURE_STORAGE_ACCOUNT_NAME (or sink.use_emulator = true for Azurite)"
            )));
        };
        check_account(&account)?;
        builder = builder.with_account(&account);
        if let Some(endpoint) = &config.endpoint {
            check_endpoint(endpoint, config.allow_http)?;
            builder = builder.with_endpoint(endpoint.clone());
        }
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        builder
            .get_config_value(&AzureConfigKey::Endpoint)
            .filter(|e| !e.contains('@') && !e.contains('?'))
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
    };
    let location = location.with_endpoint(Some(endpoint));
    pgproof_sink_object_store::install_crypto_provider();
    let store = builder.build().map_err(|e| {
        Error::config(format!(
            "cannot set up the Azure client for {}: {e}; check the [sink] options and the AZURE_* environment",
            location.describe()
        ))
    })?;
    Ok(ObjectStoreSink::new(Arc::new(store), location, options))
}

/// Azure's storage account names: 3 to 24 lowercase letters and digits.
fn check_account(account: &str) -> Result<()> {
    let ok = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "Azure storage account {account:?} (sink.account or AZURE_STORAGE_ACCOUNT_NAME) is not a valid name: 3 to 24 lowercase letters and digits"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgproof_core::ErrorKind;
    use pgproof_core::sink::Sink;

    fn config(url: &str) -> SinkConfig {
        SinkConfig {
            url: Some(url.into()),
            ..SinkConfig::default()
        }
    }

    #[test]
    fn builds_without_network_and_describes_without_credentials() {
        let mut c = config("az://backups/prod/");
        c.account = Some("pgproofacct".into());
        let builder = MicrosoftAzureBuilder::new().with_access_key("c2VjcmV0LWtleS12YWx1ZQ==");
        let sink = from_builder(&c, builder).unwrap();
        assert_eq!(
            sink.describe(),
            "az://backups/prod (endpoint https://pgproofacct.blob.core.windows.net)"
        );
        let debug = format!("{sink:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");

        let mut c = config("azure://backups");
        c.use_emulator = true;
        c.endpoint = Some("http://127.0.0.1:9/".into());
        let sink = from_builder(&c, MicrosoftAzureBuilder::new()).unwrap();
        assert_eq!(
            sink.describe(),
            "az://backups (endpoint http://127.0.0.1:9/devstoreaccount1)"
        );
    }

    #[test]
    fn options_that_do_not_apply_and_bad_names_are_refused() {
        let refused = |c: &SinkConfig| {
            let e = from_builder(c, MicrosoftAzureBuilder::new()).unwrap_err();
            assert!(e.kind() == ErrorKind::Config, "{e:?}");
            e.to_string()
        };
        let mut c = config("az://backups");
        c.region = Some("westeurope".into());
        assert!(refused(&c).contains("sink.region"));
        let mut c = config("az://backups");
        c.account = Some("pgproofacct".into());
        c.part_size_mib = 4096;
        assert!(refused(&c).contains("4000 MiB"));
        let e = refused(&config("az://backups"));
        assert!(e.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{e}");
        let mut c = config("az://backups");
        c.account = Some("Not_An.Account".into());
        assert!(refused(&c).contains("not a valid name"));
        let mut c = config("az://backups");
        c.account = Some("pgproofacct".into());
        c.endpoint = Some("http://127.0.0.1:9".into());
        assert!(refused(&c).contains("allow_http"));
    }
}
