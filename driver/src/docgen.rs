//! Man pages (section 8) and shell completions (bash, zsh, fish) rendered
//! from the clap definitions of `tierblk` and `tierblkd`; `tierblk gen man
//! DIR` and `tierblk gen completions DIR` call these, scripts/install places
//! the files.

use crate::cli_tierblkd::Args;
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::io;
use std::path::{Path, PathBuf};

/// tierblkd's command, named as its binary.
pub fn tierblkd_command() -> Command {
    Args::command().name("tierblkd").bin_name("tierblkd")
}

/// Write `NAME.8` for `tierblk` (given), every visible subcommand of it
/// (`tierblk-vol-create.8`, ...) and `tierblkd.8` into DIR.
pub fn man_pages(tierblk: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for cmd in [tierblk.name("tierblk"), tierblkd_command()] {
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        man_tree(cmd, dir, &mut out)?;
    }
    Ok(out)
}

fn man_tree(cmd: Command, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_tree(sub.clone(), dir, out)?;
    }
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration");
    out.push(man.generate_to(dir)?);
    Ok(())
}

/// Write bash (`NAME.bash`), zsh (`_NAME`) and fish (`NAME.fish`)
/// completions for `tierblk` (given, without its hidden subcommands) and
/// `tierblkd` into DIR.
pub fn completions(tierblk: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (name, cmd) in [
        ("tierblk", visible(tierblk, "tierblk")),
        ("tierblkd", tierblkd_command()),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            out.push(clap_complete::generate_to(shell, &mut cmd, name, dir)?);
        }
    }
    Ok(out)
}

/// CMD (named NAME) without its hidden top-level subcommands (completions
/// would offer them). clap cannot remove a subcommand: the command is rebuilt
/// from its parts (about, version, arguments, visible subcommands).
fn visible(cmd: Command, name: &'static str) -> Command {
    if !cmd.get_subcommands().any(|s| s.is_hide_set()) {
        return cmd;
    }
    let mut fresh = Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cmd.is_subcommand_required_set())
        .arg_required_else_help(cmd.is_arg_required_else_help_set())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(a) = cmd.get_about() {
        fresh = fresh.about(a.clone());
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tierblkd_man_page_and_completions() {
        let dir = std::env::temp_dir().join(format!("tierblk-docgen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cli = Command::new("tierblk")
            .subcommand(Command::new("vol").subcommand(Command::new("list")))
            .subcommand(Command::new("secret").hide(true));
        let pages = man_pages(cli.clone(), &dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in [
            "tierblk.8",
            "tierblk-vol.8",
            "tierblk-vol-list.8",
            "tierblkd.8",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
        }
        assert!(!names.iter().any(|x| x.contains("secret")));
        let d = std::fs::read_to_string(dir.join("tierblkd.8")).unwrap();
        for opt in ["\\-\\-alu", "\\-\\-socket", "\\-\\-cluster", "\\-\\-config"] {
            assert!(d.contains(opt), "tierblkd.8 lacks {opt}");
        }
        completions(cli, &dir).unwrap();
        let bash = std::fs::read_to_string(dir.join("tierblk.bash")).unwrap();
        assert!(bash.contains("vol") && !bash.contains("secret"));
        for f in ["_tierblk", "tierblk.fish", "tierblkd.bash", "_tierblkd"] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
