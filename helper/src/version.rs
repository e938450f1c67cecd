//! `mpiexec_docker --version`: this build, the plugin Slurm loads on this node and the Slurm release
//! it was built for, and the engines found.

use mpiexec_docker_core::engine::{Engine, EngineKind};

pub fn main() -> i32 {
    println!("mpiexec_docker {}", env!("CARGO_PKG_VERSION"));
    match mpiexec_docker_core::doctor::installed_plugin() {
        Some((plugin, built, running)) => {
            let built = built.map_or("an unknown Slurm".to_string(), |v| format!("Slurm {v}"));
            let running = running.map_or(String::new(), |v| format!("; this node runs Slurm {v}"));
            println!("plugin: {} (built for {built}{running})", plugin.display());
        }
        None => println!("plugin: not in this node's plugstack.conf"),
    }
    let engines: Vec<String> = [EngineKind::Podman, EngineKind::Docker]
        .into_iter()
        .filter_map(|k| Engine::find(k).ok())
        .map(|e| match e.version() {
            Ok(v) => format!("{} {v}", e.name()),
            Err(_) => format!("{} (not usable by you)", e.name()),
        })
        .collect();
    println!("engines: {}", if engines.is_empty() { "none found".to_string() } else { engines.join(", ") });
    0
}
