//! What enroot's PyTorch hook (used with pyxis) gives each task of an image that sets
//! `PYTORCH_VERSION`: the variables `torch.distributed` reads, from Slurm's.
//!
//! | variable | from |
//! | --- | --- |
//! | `RANK` | `SLURM_PROCID` |
//! | `LOCAL_RANK` | `SLURM_LOCALID` |
//! | `WORLD_SIZE` | `SLURM_NTASKS` |
//! | `MASTER_ADDR` | the first host of `SLURM_STEP_NODELIST` |
//! | `MASTER_PORT` | `61000 + SLURM_JOB_ID % 4536` |
//! | `OMP_NUM_THREADS` | `1` when the step has more tasks than nodes |
//!
//! A variable the image or the job already sets is left as it is.

/// The variables for one task; `image` is the image's environment, `job` reads the task's.
pub fn task_vars(image: &[(String, String)], job: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    if !image.iter().any(|(k, _)| k == "PYTORCH_VERSION") {
        return Vec::new();
    }
    let set = |name: &str| image.iter().any(|(k, _)| k == name) || job(name).is_some();
    let number = |name: &str| job(name).and_then(|v| v.trim().parse::<u64>().ok());
    let mut vars = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(v) = value.filter(|_| !set(name)) {
            vars.push((name.to_string(), v));
        }
    };
    add("MASTER_ADDR", job("SLURM_STEP_NODELIST").and_then(|l| first_host(&l)));
    add("MASTER_PORT", number("SLURM_JOB_ID").map(|id| (61000 + id % 4536).to_string()));
    add("WORLD_SIZE", job("SLURM_NTASKS"));
    add("RANK", job("SLURM_PROCID"));
    add("LOCAL_RANK", job("SLURM_LOCALID"));
    let (tasks, nodes) = (number("SLURM_STEP_NUM_TASKS").unwrap_or(1), number("SLURM_STEP_NUM_NODES").unwrap_or(1));
    add("OMP_NUM_THREADS", (tasks > nodes).then(|| "1".to_string()));
    vars
}

/// The first host of a Slurm host list (`node[01-03,7],gpu5` → `node01`), as `scontrol show
/// hostnames` would print it first.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    // the first entry: up to a comma outside brackets
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map(|(i, _)| i)
        .unwrap_or(list.len());
    let entry = &list[..end];
    let mut host = String::new();
    let mut rest = entry;
    // each bracket range contributes its first value
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']')? + open;
        host.push_str(&rest[..open]);
        let first = rest[open + 1..close].split(',').next()?;
        host.push_str(first.split('-').next()?);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn first_hosts() {
        assert_eq!(first_host("node[1-3]").as_deref(), Some("node1"));
        assert_eq!(first_host("node[01-03,7],gpu5").as_deref(), Some("node01"));
        assert_eq!(first_host("gpu5,node[1-2]").as_deref(), Some("gpu5"));
        assert_eq!(first_host("rack[2-3]-n[04-05]").as_deref(), Some("rack2-n04"));
        assert_eq!(first_host("n[3,1]").as_deref(), Some("n3"));
        assert_eq!(first_host(""), None);
        assert_eq!(first_host("n[1-"), None);
    }

    #[test]
    fn only_pytorch_images_and_never_over_what_is_set() {
        let job: HashMap<&str, &str> = [
            ("SLURM_STEP_NODELIST", "node[2-3]"),
            ("SLURM_JOB_ID", "4600"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_STEP_NUM_NODES", "2"),
            ("MASTER_PORT", "1234"),
        ]
        .into();
        let get = |k: &str| job.get(k).map(|v| v.to_string());
        assert!(task_vars(&[("PATH".into(), "/bin".into())], get).is_empty());
        let image = [("PYTORCH_VERSION".to_string(), "2.5".to_string()), ("LOCAL_RANK".into(), "9".into())];
        let vars: HashMap<String, String> = task_vars(&image, get).into_iter().collect();
        let want: HashMap<String, String> =
            [("MASTER_ADDR", "node2"), ("WORLD_SIZE", "4"), ("RANK", "3"), ("OMP_NUM_THREADS", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(vars, want);
        let no_port = |k: &str| if k == "MASTER_PORT" { None } else { get(k) };
        let vars = task_vars(&image, no_port);
        assert!(vars.contains(&("MASTER_PORT".into(), (61000 + 4600 % 4536).to_string())), "{vars:?}");
    }
}
