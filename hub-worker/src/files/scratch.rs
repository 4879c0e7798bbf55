//! A scratch integrations directory for the loader's tests, removed on drop.

use std::path::{Path, PathBuf};

/// A fresh directory under the system's temp dir, named `<prefix>-<uuid>`.
pub(crate) struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub(crate) fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// A scratch directory holding a catalogue of one core type (`t`, version 1, schema
    /// `any.json`, which accepts anything) and one destination (`q`): what most loader tests
    /// need beside the file under test.
    pub(crate) fn with_catalogue(prefix: &str) -> Self {
        let d = Self::new(prefix);
        d.write(
            "core.toml",
            "destinations = [\"q\"]\n[[message_types]]\ntype = \"t\"\nversion = \"1\"\nschema = \"any.json\"\n",
        );
        d.write("any.json", "{}");
        d
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
