//! Profiles: the persistent `<root>/profiles/<name>` nodes holding [`Profile`] JSON, which
//! `mq-fabric` writes and brokers started with `--profile` read.

use crate::error::RegistryError;
use crate::layout::Profile;
use crate::session::{check_name, encode, Registry, PERSISTENT};

impl Registry {
    fn profile_path(&self, name: &str) -> Result<String, RegistryError> {
        let path = self.inner.layout.profile(name);
        check_name("profile", name, || path.clone())?;
        Ok(path)
    }

    /// Creates the profile node. `NodeExists` if a profile with that name exists.
    pub async fn create_profile(&self, p: &Profile) -> Result<(), RegistryError> {
        let path = self.profile_path(&p.name)?;
        let data = encode(&path, p)?;
        self.create_with_parents(&path, &data, &PERSISTENT).await?;
        tracing::info!(profile = %p.name, "created profile");
        Ok(())
    }

    /// Creates the profile node or overwrites it.
    pub async fn put_profile(&self, p: &Profile) -> Result<(), RegistryError> {
        let path = self.profile_path(&p.name)?;
        let data = encode(&path, p)?;
        self.put_persistent(&path, &data).await?;
        tracing::info!(profile = %p.name, "stored profile");
        Ok(())
    }

    /// The profile named `name`, `None` if there is none; `Invalid` if the node is not profile
    /// JSON.
    pub async fn profile(&self, name: &str) -> Result<Option<Profile>, RegistryError> {
        let path = self.profile_path(name)?;
        Ok(self.get_json(&path).await?.map(|(p, _)| p))
    }

    /// All profiles, sorted by node name. Nodes that are not profile JSON are left out (logged).
    pub async fn profiles(&self) -> Result<Vec<Profile>, RegistryError> {
        let mut names = self.children(&self.inner.layout.profiles()).await?;
        names.sort();
        let reads = names.iter().map(|name| async move {
            let path = self.profile_path(name)?;
            self.get_json::<Profile>(&path).await
        });
        let mut out = Vec::with_capacity(names.len());
        for read in futures::future::join_all(reads).await {
            match read {
                Ok(Some((p, _))) => out.push(p),
                Ok(None) => {}
                Err(RegistryError::Invalid { path, reason }) => {
                    tracing::warn!(%path, %reason, "ignoring a profile node that is not profile JSON")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Deletes the profile. `NoNode` if there is none.
    pub async fn delete_profile(&self, name: &str) -> Result<(), RegistryError> {
        let path = self.profile_path(name)?;
        self.delete(&path, None).await?;
        tracing::info!(profile = %name, "deleted profile");
        Ok(())
    }
}
