//! Where a remote is: a URL (`s3://bucket/prefix`, `gs://`, `az://`, `https://`, `file://`) or a
//! plain directory, opened as an [`ObjectStore`] with credentials from the standard environment.

use super::RemoteError;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreScheme};
use std::path::Path;
use std::sync::Arc;
use url::Url;

/// An opened remote location: the object store and the prefix under which rkd keeps its files.
pub(super) struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside it (empty for a directory remote, whose store is rooted there).
    pub prefix: ObjPath,
    /// How messages name it (no credentials, no query).
    pub shown: String,
}

/// Opens `spec`: a URL with a scheme, else a directory (relative to `base`), created if missing.
pub(super) fn open(spec: &str, base: &Path) -> Result<Location, RemoteError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(RemoteError::Open("the remote is empty".into()));
    }
    let url = match Url::parse(spec) {
        // `C:\x` parses with scheme `c`; a one-letter scheme is a Windows drive, not a URL.
        Ok(u) if u.scheme().len() > 1 => u,
        _ => return open_dir(&base.join(spec), spec),
    };
    let shown = shown(&url);
    let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|e| {
        RemoteError::Open(format!(
            "{shown}: {e}; a remote is s3://BUCKET/PREFIX, gs://, az://, http(s)://, file:// or a directory"
        ))
    })?;
    let fail = |e: object_store::Error| RemoteError::Open(format!("{shown}: {e}"));
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            let dir = url
                .to_file_path()
                .map_err(|()| RemoteError::Open(format!("{shown}: not a local path")))?;
            return open_dir(&dir, &shown);
        }
        ObjectStoreScheme::AmazonS3 => Arc::new(s3_builder().with_url(url.as_str()).build().map_err(fail)?),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(fail)?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(fail)?,
        ),
        ObjectStoreScheme::Http => {
            let root = &url[..url::Position::BeforePath];
            let options = object_store::ClientOptions::new().with_allow_http(url.scheme() == "http");
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(root)
                    .with_client_options(options)
                    .build()
                    .map_err(fail)?,
            )
        }
        ObjectStoreScheme::Memory => {
            return Err(RemoteError::Open(format!(
                "{shown}: an in-memory store is no remote (nothing would outlive this run)"
            )))
        }
        other => return Err(RemoteError::Open(format!("{shown}: {other:?} is not supported"))),
    };
    Ok(Location {
        store,
        prefix: path,
        shown,
    })
}

/// A directory remote (a cluster's shared filesystem): created when missing, if it can be.
fn open_dir(dir: &Path, shown: &str) -> Result<Location, RemoteError> {
    // A read-only remote that does not exist yet holds nothing; creating it may fail then.
    let _ = std::fs::create_dir_all(dir);
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| RemoteError::Open(format!("the remote directory {}: {e}", dir.display())))?;
    Ok(Location {
        store: Arc::new(store),
        prefix: ObjPath::default(),
        shown: shown.to_string(),
    })
}

/// A URL as messages show it: without user, password and query (where signed URLs keep secrets).
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// An S3 client configured from `AWS_*` variables and, for what they leave unset, the shared
/// credentials and config files of the profile (`AWS_PROFILE`, else `default`). An `http://`
/// endpoint (a local MinIO or moto) is allowed without TLS.
fn s3_builder() -> object_store::aws::AmazonS3Builder {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
    let mut b = AmazonS3Builder::from_env();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile = profile_settings();
    let pick = |var: &str, name: &str| env(var).or_else(|| profile.get(name).cloned());
    if env("AWS_ACCESS_KEY_ID").is_none() {
        if let (Some(id), Some(secret)) = (profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")) {
            b = b
                .with_config(K::AccessKeyId, id)
                .with_config(K::SecretAccessKey, secret);
            if let Some(token) = profile.get("aws_session_token") {
                b = b.with_config(K::Token, token);
            }
        }
    }
    if let Some(region) = pick("AWS_REGION", "region").or_else(|| env("AWS_DEFAULT_REGION")) {
        b = b.with_config(K::Region, region);
    }
    let endpoint = pick("AWS_ENDPOINT_URL", "endpoint_url").or_else(|| env("AWS_ENDPOINT"));
    if let Some(endpoint) = endpoint {
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        b = b.with_config(K::Endpoint, endpoint);
    }
    b
}

/// The settings of the AWS profile in use (`AWS_PROFILE`, else `default`), from the shared
/// credentials and config files (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`, else
/// `~/.aws/credentials` and `~/.aws/config`); empty when there are none.
fn profile_settings() -> std::collections::HashMap<String, String> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    profile_from(
        file("AWS_SHARED_CREDENTIALS_FILE", "credentials").as_deref(),
        file("AWS_CONFIG_FILE", "config").as_deref(),
        &profile,
    )
}

/// A profile's settings: its section of the credentials file (`[NAME]`), then, for keys not set
/// there, of the config file (`[profile NAME]`, or `[default]`); keys lowercased.
fn profile_from(
    credentials: Option<&Path>,
    config: Option<&Path>,
    profile: &str,
) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let config_section = if profile == "default" {
        profile.to_string()
    } else {
        format!("profile {profile}")
    };
    for (path, section) in [(credentials, profile.to_string()), (config, config_section)] {
        let Some(ini) = path.and_then(|p| ini::Ini::load_from_file(p).ok()) else {
            continue;
        };
        if let Some(props) = ini.section(Some(section.as_str())) {
            for (k, v) in props.iter() {
                out.entry(k.to_ascii_lowercase()).or_insert_with(|| v.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_credentials_in_a_url() {
        let u = Url::parse("https://user:secret@example.com/cache?X-Amz-Signature=abc").unwrap();
        assert_eq!(shown(&u), "https://example.com/cache");
    }

    #[test]
    fn a_profile_is_read_from_the_credentials_file_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[team]\naws_access_key_id = T\naws_secret_access_key = TS\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n\n[profile team]\nregion = us-east-2\nendpoint_url = http://127.0.0.1:9000\naws_access_key_id = ignored\n",
        )
        .unwrap();
        let team = profile_from(Some(&creds), Some(&config), "team");
        assert_eq!(team["aws_access_key_id"], "T", "the credentials file wins");
        assert_eq!(team["aws_secret_access_key"], "TS");
        assert_eq!(team["region"], "us-east-2");
        assert_eq!(team["endpoint_url"], "http://127.0.0.1:9000");
        let default = profile_from(Some(&creds), Some(&config), "default");
        assert_eq!(
            (default["aws_access_key_id"].as_str(), default["region"].as_str()),
            ("D", "eu-west-1")
        );
        assert!(profile_from(Some(&dir.path().join("none")), None, "team").is_empty());
    }

    #[test]
    fn a_plain_path_is_a_directory_remote_relative_to_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let loc = open("team-cache", dir.path()).unwrap();
        assert!(dir.path().join("team-cache").is_dir());
        assert_eq!(loc.shown, "team-cache");
        let e = open("ftp://x/y", dir.path()).err().unwrap().to_string();
        assert!(e.contains("ftp://x/y"), "{e}");
    }
}
