//! The manager, as both kinds of update run it: copied to
//! `manager_in_action` (so an update may replace `palette-manager`), run
//! detached in its own process group (it outlives a stopped watchdog) with
//! its output in a file, its outcome read from `state/manager-result.json`.
//!
//! Must not: decide what to run next or record an outcome — a failed step
//! is handed back as a `ManagerError` for the caller to judge.

use palette_host::manager_result::ManagerResult;

use crate::ctx::Ctx;
use crate::error::ManagerError;

pub(crate) fn copy_manager(ctx: &Ctx) -> Result<(), ManagerError> {
    let src = ctx.layout.manager();
    let dst = ctx.layout.manager_in_action();
    let tmp = dst.with_extension("new");
    let copy = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ManagerError::Copy { path, source }
    };
    // Whatever fails, no partial copy is left on a full disk.
    if let Err(e) = fs_err::copy(&src, &tmp) {
        let _ = fs_err::remove_file(&tmp);
        return Err(copy(&tmp)(e));
    }
    if let Err(e) = fs_err::rename(&tmp, &dst) {
        let _ = fs_err::remove_file(&tmp);
        return Err(copy(&dst)(e));
    }
    Ok(())
}

/// Runs `manager_in_action` in its own process group (it outlives a
/// stopped watchdog) and waits for it. Its output goes to a file, not a
/// pipe, so it never dies of a closed pipe; its outcome is read from the
/// result file it writes (`state/manager-result.json`).
pub(crate) async fn run_manager(ctx: &Ctx, args: &[String]) -> Result<ManagerResult, ManagerError> {
    let exe = ctx.layout.manager_in_action();
    if !exe.exists() {
        copy_manager(ctx)?;
    }
    let spawn = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ManagerError::Spawn { path, source }
    };
    ManagerResult::clear(&ctx.layout).map_err(spawn(&ManagerResult::path(&ctx.layout)))?;
    let out_path = ctx.layout.logs().join("manager-console.log");
    // The manager's stdout/stderr need the std handle.
    let (out, _) = fs_err::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&out_path)
        .map_err(spawn(&out_path))?
        .into_parts();
    let err = out.try_clone().map_err(spawn(&out_path))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--base")
        .arg(&ctx.layout.base)
        .args(args)
        .stdout(out)
        .stderr(err);
    // Just copied: a fork elsewhere in this process may still hold the
    // copy's write handle until it execs (ETXTBSY); that passes at once.
    let mut tries = 0;
    let mut child = loop {
        match palette_service::spawn_detached(&mut cmd) {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => break other.map_err(spawn(&exe))?,
        }
    };
    let status = child.wait().await.map_err(spawn(&exe))?;
    let result = ManagerResult::load(&ctx.layout).ok().flatten();
    match result {
        Some(r) if r.ok && status.success() => Ok(r),
        Some(r) if !r.ok => Err(ManagerError::Failed {
            op: args[0].clone(),
            reason: r.reason.unwrap_or_else(|| "no reason given".into()),
            local_io: r.local_io,
        }),
        _ => {
            let text = tokio::fs::read_to_string(&out_path)
                .await
                .unwrap_or_default();
            Err(ManagerError::NoResult {
                op: args[0].clone(),
                status: status.to_string(),
                last: text.lines().last().unwrap_or("").trim().to_string(),
            })
        }
    }
}
