//! Every parser of what users, sites and the relay's clients hand us, fed random and hostile input
//! (issue 19): a deterministic generator (so a failure is reproduced by its seed), thousands of inputs
//! per parser, each run well under a second. What must hold: no panic, no hang, and an error is one
//! line (what the user sees is a single line naming the problem; see [`crate::user_text`] for input
//! that carries line breaks of its own).

use std::time::{Duration, Instant};

/// A small, fixed-seed xorshift generator: the same inputs on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A string of the characters parsers split on, quote or choke on, with some letters and digits.
    fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            ":",
            ",",
            "+",
            "=",
            "/",
            ".",
            "..",
            "-",
            "--",
            "*",
            " ",
            "\t",
            "\n",
            "\0",
            "\"",
            "'",
            "$",
            "`",
            "{",
            "}",
            "[",
            "]",
            "#",
            "@",
            "\\",
            "%",
            "a",
            "Z",
            "0",
            "9",
            "4294967295",
            "-1",
            "é",
            "\u{202e}",
            "tmpfs",
            "umount",
            "ro",
            "rw",
            "auto",
            "exec",
            "net",
            "docker://",
            "dockerd://",
            "podman://",
            "./",
            "/proc/self",
            "sha256:",
            "localhost",
            "node[1-3]",
            "true",
            "yes",
        ];
        let n = self.below(max + 1);
        (0..n).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }
    /// `valid` with a few characters replaced, inserted or removed.
    fn mutate(&mut self, valid: &str) -> String {
        let mut chars: Vec<char> = valid.chars().collect();
        for _ in 0..=self.below(3) {
            let at = self.below(chars.len() + 1);
            let piece: Vec<char> = self.text(2).chars().collect();
            match self.below(3) {
                0 if at < chars.len() => {
                    chars.remove(at);
                }
                1 if at < chars.len() => {
                    chars.splice(at..=at, piece);
                }
                _ => {
                    chars.splice(at..at, piece);
                }
            }
        }
        chars.into_iter().collect()
    }
    /// Random input, or a mutation of one of `valid`.
    fn input(&mut self, valid: &[&str]) -> String {
        match (self.below(2), valid.is_empty()) {
            (0, false) => {
                let v = valid[self.below(valid.len())];
                self.mutate(v)
            }
            _ => self.text(24),
        }
    }
}

const ROUNDS: usize = 3000;

/// Runs `check` on inputs from `valid` and noise; each error must be one line.
fn hostile<E: std::fmt::Display>(seed: u64, valid: &[&str], mut check: impl FnMut(&str) -> Result<(), E>) {
    let mut g = Gen(seed);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        let input = g.input(valid);
        if let Err(e) = check(&input) {
            let line = e.to_string();
            assert!(!line.is_empty(), "an empty error for {input:?}");
            // a message quotes what it was given: a break in the input is escaped where it is
            // shown (`user_text::one_line`, in the helper's and the plugin's output); a message
            // about input without one is one line of itself
            let shown = crate::user_text::one_line(&input);
            let line = if shown != input { crate::user_text::one_line(&line) } else { line };
            assert!(!line.contains('\n'), "not one line for {input:?}: {line}");
        }
    }
    assert!(start.elapsed() < Duration::from_secs(20), "too slow: {:?}", start.elapsed());
}

#[test]
fn container_options() {
    use crate::container_options::{ContainerOptions, OPTIONS};
    for (i, def) in OPTIONS.iter().enumerate() {
        let valid = [
            "/scratch:/data:ro+rprivate,tmpfs:/t",
            "localhost/md-openmpi",
            "dev:exec",
            "PATH,HOME",
            "net,uts",
            "out.tar",
        ];
        hostile(11 + i as u64, &valid, |v| ContainerOptions::default().apply(def.name, v));
    }
    // and as environment defaults
    hostile(7, &["1", "no", "/a:/b"], |v| {
        ContainerOptions::default().with_env_defaults(|k| k.starts_with("PYXIS_").then(|| v.to_string())).map(|_| ())
    });
}

#[test]
fn plugstack_arguments() {
    use crate::plugstack::PluginArgs;
    let valid = ["engine=docker", "helper=/usr/bin/x", "mounts=/a:/b", "sbatch_support=0", "container_scope=job"];
    hostile(21, &valid, |w| {
        let words: Vec<&str> = w.split(' ').collect();
        PluginArgs::parse(&words).map(|_| ())
    });
}

#[test]
fn mounts_images_and_names() {
    use crate::container::Mount;
    use crate::image_source::ImageSource;
    hostile(31, &["./data:/d:ro+rprivate", "tmpfs:/s:size=1g", "umount:/tmp", "/a"], |m| {
        Mount::parse_in(m, std::path::Path::new("/w")).map(|m| {
            // what was parsed reads back the same
            assert_eq!(Mount::parse_in(&m.to_string(), std::path::Path::new("/w")).as_ref(), Ok(&m), "{m}");
        })
    });
    hostile(32, &["docker://a/b:1", "r:5000#x/y", "./f.sqsh", "dockerd://x", "oci-archive:/f:n"], |i| {
        ImageSource::parse(i).map(|_| ())
    });
    hostile(33, &["auto", "no_exec"], |n| n.parse::<crate::container_options::NameMode>().map(|_| ()));
    hostile(34, &["1500:1500:27,44"], |u| u.parse::<crate::identity::UserIds>().map(|_| ()));
}

#[test]
fn site_and_user_configuration_files() {
    let dir = crate::test_scratch::subdir("hostile-config");
    let valid = [
        "engine: docker\nmounts: ['/a:/b']\n",
        "cache_max_size: 5G\nrelay_commands: [srun]\n",
        "policy: {allowed_images: ['x/*'], forced_images: {gpu: y}}\n",
        "devices: {cdi: off, cdi_dirs: [/etc/cdi]}\nregistry_auth: /etc/a.json\n",
    ];
    let mut n = 0;
    hostile(41, &valid, |text| {
        n += 1;
        let site = dir.join(format!("site-{n}.yaml"));
        let user = dir.join(format!("user-{n}.yaml"));
        std::fs::write(&site, text).unwrap();
        std::fs::write(&user, text).unwrap();
        let r = crate::config::Config::load_from(&[site.clone(), user.clone()]).map(|_| ());
        let _ = (std::fs::remove_file(site), std::fs::remove_file(user));
        r
    });
}

#[test]
fn relay_requests() {
    use crate::relay::protocol::{decode, encode, Request};
    let mut g = Gen(51);
    let valid = encode(&Request {
        argv: vec!["srun".into(), "-N2".into()],
        env: vec![("A".into(), "b".into())],
        cwd: "/w".into(),
    });
    for _ in 0..ROUNDS {
        let mut bytes = valid.clone();
        for _ in 0..=g.below(4) {
            let at = g.below(bytes.len());
            bytes[at] = g.next() as u8;
        }
        if g.below(4) == 0 {
            bytes.truncate(g.below(bytes.len() + 1));
        }
        if let Err(e) = decode(&bytes) {
            assert!(!e.to_string().contains('\n'));
        }
        let noise: Vec<u8> = (0..g.below(64)).map(|_| g.next() as u8).collect();
        let _ = decode(&noise);
    }
}

#[test]
fn small_parsers() {
    hostile(61, &["0,2-3", "all", "4294967290-4294967295"], |t| {
        crate::devices::GpuAllocation::parse_request(t).map(|_| ())
    });
    hostile(62, &["0-4294967295", "1,2"], |t| {
        let set = crate::devices::parse_index_list(t);
        assert!(set.len() <= 64 * 4097, "{t:?}");
        Ok::<(), String>(())
    });
    hostile(63, &["50G", "1.5T", "10"], |t| {
        let _ = crate::config::parse_size(t);
        Ok::<(), String>(())
    });
    hostile(64, &["node[1-3],gpu[01-02]"], |t| {
        let _ = crate::pytorch::first_host(t);
        Ok::<(), String>(())
    });
    hostile(65, &["PATH=/bin\nexport A=\"b\"\n"], |t| {
        let _ = crate::engine::images::parse_environment(t);
        Ok::<(), String>(())
    });
    hostile(66, &["https://index.docker.io/v1/", "r:5000/x"], |t| {
        let _ = (crate::registry_auth::host_of_key(t), crate::registry_auth::registry_of(t));
        Ok::<(), String>(())
    });
    hostile(67, &["slurm-wlm 24.11.5", "slurm 22.05.8"], |t| {
        let _ = crate::slurm_version::SlurmVersion::parse(t);
        Ok::<(), String>(())
    });
    hostile(68, &["cdiVersion: 0.6.0\nkind: v/gpu\ndevices: []\n"], |t| {
        crate::cdi::Spec::parse(std::path::Path::new("/etc/cdi/x.yaml"), t).map(|_| ())
    });
    // a pattern of many stars against a long text is still quick
    let start = Instant::now();
    let long = "a".repeat(20_000);
    assert!(!crate::policy::glob_match(&format!("{}b", "a*".repeat(500)), &long));
    assert!(start.elapsed() < Duration::from_secs(2));
}
