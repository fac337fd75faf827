//! Small throwaway file systems for the failures a normal directory cannot produce: a full disk (a
//! tmpfs with a size limit) and a read-only directory that even root cannot write (a tmpfs mounted
//! read-only). Mounting needs root with CAP_SYS_ADMIN; where that is missing, [`Tmpfs::mount`]
//! returns `None` and the caller skips, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily, so an open file cannot keep it) when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kb` at `path` (created, mode 0755) with extra `options` (e.g. `ro`);
    /// `None`, with the reason printed, if this machine does not allow it.
    pub fn mount(path: &Path, size_kb: u64, options: &[&str]) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create mount point");
        let mut opts = format!("size={size_kb}k,mode=0755");
        for o in options {
            opts.push(',');
            opts.push_str(o);
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "cannot mount a tmpfs at {} ({}): {}",
                    path.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("cannot run mount: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
