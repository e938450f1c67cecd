//! `mpiexec_docker images [prune | remove-container NAME] [--engine podman|docker]`: what the tool
//! fetched into this node's store for the caller (image files loaded, registry images pulled) and
//! the named containers kept there (`container_scope=global`), and removing them.

use mpiexec_docker_core::config::Config;
use mpiexec_docker_core::engine::Engine;
use mpiexec_docker_core::engine::EngineKind;
use mpiexec_docker_core::image_cache;
use mpiexec_docker_core::step_container;

pub fn main(args: &[String]) -> i32 {
    let mut prune = false;
    let mut remove_container = None;
    let mut engine = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "prune" => prune = true,
            "remove-container" => match it.next() {
                Some(name) => remove_container = Some(name.clone()),
                None => return usage(),
            },
            "--engine" => match it.next().map(|e| e.parse::<EngineKind>()) {
                Some(Ok(k)) => engine = Some(k),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if let Some(name) = remove_container {
        return match forget_container(&name, engine) {
            Ok(()) => 0,
            Err(e) => {
                mpiexec_docker_core::say_error!("{e:#}");
                1
            }
        };
    }
    match run(prune, engine) {
        Ok(()) => 0,
        Err(e) => {
            mpiexec_docker_core::say_error!("{e:#}");
            1
        }
    }
}

fn run(prune: bool, kind: Option<EngineKind>) -> anyhow::Result<()> {
    let config = Config::load()?;
    let engine = Engine::find(kind.unwrap_or(config.engine))?;
    let _lock = image_cache::store_lock()?;
    let items = image_cache::list(&engine)?;
    if !prune {
        println!("{:<64} {:<12} {:>10}", "IMAGE", "ID", "SIZE");
        for c in &items {
            println!("{:<64} {:<12} {:>10}", c.name, c.id, human(c.size));
        }
        // (a store of the user's own: the container's name is the tag)
        let kept = engine.tags_of(step_container::KEPT_REPOSITORY).unwrap_or_default();
        if !kept.is_empty() {
            println!("kept named containers (container_scope=global): {}", kept.join(" "));
        }
        // the totals last, where scripts read them
        let total = image_cache::total_size(&items);
        let cap = config.cache_max_size.map(|m| format!(" (cap {})", human(m))).unwrap_or_default();
        println!("{} image(s), {}{cap}", items.len(), human(total));
        return Ok(());
    }
    let kept = image_cache::remove(&engine, &items);
    for (name, why) in &kept {
        eprintln!("mpiexec_docker: kept {name}: {why}");
    }
    println!("removed {} image(s)", items.len() - kept.len());
    if kept.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} image(s) could not be removed (in use?)", kept.len())
    }
}

/// Removes the named container this node keeps for the caller (`container_scope=global`).
fn forget_container(name: &str, kind: Option<EngineKind>) -> anyhow::Result<()> {
    let config = Config::load()?;
    let engine = Engine::find(kind.unwrap_or(config.engine))?;
    let kept = step_container::kept_image(name, None);
    if !engine.tags_of(step_container::KEPT_REPOSITORY)?.iter().any(|t| t == name) {
        anyhow::bail!("no container named '{name}' is kept on this node; 'mpiexec_docker images' lists them");
    }
    engine.remove_images(&[kept]).map_err(|e| anyhow::anyhow!("cannot remove container '{name}': {e}"))?;
    println!("removed container {name}");
    Ok(())
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn usage() -> i32 {
    mpiexec_docker_core::say_error!(
        "usage: mpiexec_docker images [prune | remove-container NAME] [--engine podman|docker]"
    );
    2
}
