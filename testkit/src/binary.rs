//! Finding the workspace's binaries: `raftkv-server` (what a cluster runs) and `raftkv` (the CLI).
//!
//! One rule for every caller: an environment variable naming the file wins; otherwise the binary is looked
//! for next to the running executable and one directory up. That finds it for a binary in `target/<profile>/`
//! (jepsen-lite's `run`) and for a test executable in `target/<profile>/deps/` alike, in whatever target
//! directory cargo used. Nothing here builds: a test cannot ask cargo for another package's binary on stable
//! (artifact dependencies are unstable), so when the file is missing the error says which command builds it.
//! `cargo test --workspace` builds every binary of the workspace before it runs a test.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Directories searched for a binary: the running executable's own and its parent.
pub const SEARCHED_DIRS: usize = 2;

/// A binary of the workspace: its file name, the variable that overrides where it is, and its package.
#[derive(Clone, Copy, Debug)]
pub struct Binary {
    pub name: &'static str,
    pub env_override: &'static str,
    pub package: &'static str,
}

/// The node binary.
pub const SERVER: Binary = Binary {
    name: "raftkv-server",
    env_override: "RAFTKV_SERVER_BIN",
    package: "raftkv-server",
};

/// The command-line tool.
pub const CLI: Binary = Binary {
    name: "raftkv",
    env_override: "RAFTKV_CLI_BIN",
    package: "raftkv-client",
};

impl Binary {
    /// The binary's path: from its environment variable if set (which must then name a file), else next to
    /// the running executable or one directory up.
    pub fn find(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env_override) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "{}={} is not a file: point it at a built {} or unset it",
                    self.env_override,
                    path.display(),
                    self.name
                );
            }
            return Ok(path);
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        self.find_near(&exe)
    }

    /// The binary next to `exe` or one directory up, or an error saying how to build it.
    pub fn find_near(&self, exe: &Path) -> anyhow::Result<PathBuf> {
        let dirs: Vec<&Path> = exe.ancestors().skip(1).take(SEARCHED_DIRS).collect();
        if let Some(found) = dirs
            .iter()
            .map(|dir| dir.join(self.name))
            .find(|candidate| candidate.is_file())
        {
            return Ok(found);
        }
        let release = dirs
            .iter()
            .any(|dir| dir.file_name().is_some_and(|name| name == "release"));
        let searched: Vec<String> = dirs.iter().map(|dir| dir.display().to_string()).collect();
        bail!(
            "{} not found in {}: build it with `cargo build -p {}{}` (`cargo test --workspace` builds it), \
             or set {} to its path",
            self.name,
            searched.join(" or "),
            self.package,
            if release { " --release" } else { "" },
            self.env_override
        )
    }
}

/// `raftkv-server` (see [`Binary::find`]).
pub fn server_binary() -> anyhow::Result<PathBuf> {
    SERVER.find()
}

/// `raftkv` (see [`Binary::find`]).
pub fn cli_binary() -> anyhow::Result<PathBuf> {
    CLI.find()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_next_to_the_executable_or_one_up_else_the_error_says_what_to_build() {
        let dir = tempfile::TempDir::new().unwrap();
        let profile = dir.path().join("release");
        let deps = profile.join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("it-0123");

        let error = SERVER.find_near(&exe).unwrap_err().to_string();
        assert!(
            error.contains("raftkv-server not found")
                && error.contains("cargo build -p raftkv-server --release")
                && error.contains("RAFTKV_SERVER_BIN"),
            "{error}"
        );

        std::fs::write(profile.join("raftkv-server"), "").unwrap();
        assert_eq!(
            SERVER.find_near(&exe).unwrap(),
            profile.join("raftkv-server")
        );
        std::fs::write(deps.join("raftkv-server"), "").unwrap();
        assert_eq!(SERVER.find_near(&exe).unwrap(), deps.join("raftkv-server"));
    }
}
