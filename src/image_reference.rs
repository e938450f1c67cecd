//! The registry image reference grammar (the distribution project's, which every engine applies):
//! `[DOMAIN[:PORT]/]PATH[:TAG][@DIGEST]`. Checked by hand rather than with a regular expression: the
//! helper is a new process at every step, and compiling the grammar's expression cost 64 ms of each
//! start (measured: `oci-spec`'s `Reference` parse, first call of a process, release build).
//!
//! - DOMAIN: components of letters, digits and inner `-`, joined by `.`; an optional `:PORT` of
//!   digits.
//! - PATH: components of lower-case letters and digits, joined inside by `.`, `_`, `__` or any number
//!   of `-`; components joined by `/`.
//! - TAG: a word character, then up to 127 of word characters, `.` and `-`.
//! - DIGEST: `ALGORITHM:HEX` of an algorithm the engines know (sha256, sha384, sha512), with its
//!   length of lower-case hex digits.
//! - The name (domain and path) is at most 255 characters.

/// Why `reference` is not a registry image reference (`None`: it is one).
pub fn problem(reference: &str) -> Option<&'static str> {
    if reference.is_empty() {
        return Some("it is empty");
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        if !is_digest(d) {
            return Some("the digest must be sha256: and 64 lower-case hex digits (or sha384, sha512)");
        }
    }
    // a tag follows the last ':' after the last '/' (a ':' before it is the domain's port)
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !is_tag(t) {
            return Some("the tag must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'");
        }
    }
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.len() > 255 {
        return Some("the name is longer than 255 characters");
    }
    let components: Vec<&str> = name.split('/').collect();
    // the first component is a domain when the rest alone is a path, and it is one
    let as_path = components.iter().all(|c| is_path_component(c));
    let as_domain =
        components.len() > 1 && is_domain(components[0]) && components[1..].iter().all(|c| is_path_component(c));
    match as_path || as_domain {
        true => None,
        false => Some("the name must be lower-case letters, digits and separators, after an optional registry"),
    }
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or runs of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // a separator, then an alphanumeric again
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `HOST[:PORT]`: HOST dot-joined components of `[A-Za-z0-9]` with inner `-` (an IPv6 address in
/// brackets is refused, as the engines of these stacks refuse it).
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `ALGORITHM:HEX` of an algorithm engines know, with its length of lower-case hex digits.
fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else { return false };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4c1e7f0a6b2d3c5e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e";
    const SHORT: &str = "sha256:4c1e7f0a6b2d3c5e8f9a0b1c2d3e4f5a";

    #[test]
    fn what_engines_take_is_taken() {
        for r in [
            "ubuntu",
            "ubuntu:22.04",
            "library/ubuntu",
            "docker.io/library/ubuntu:latest",
            "localhost/md-openmpi",
            "localhost:5000/md/openmpi:1",
            "127.0.0.1:5000/md/openmpi:1",
            "10.77.0.1:5000/md/random-100m",
            "nvcr.io/nvidia/pytorch:24.01-py3",
            "ghcr.io/some-org/some__name/a.b_c---d:v1.2.3_x",
            "Registry.Example.com/x",
            &format!("ubuntu@{DIGEST}"),
            &format!("ubuntu:22.04@{DIGEST}"),
        ] {
            assert_eq!(problem(r), None, "{r}");
        }
    }

    #[test]
    fn what_engines_refuse_is_refused() {
        for r in [
            "",
            "Ubuntu",
            "ubuntu:",
            ":tag",
            "ubuntu:.x",
            "ubuntu:-x",
            "ubuntu::x",
            "ubu ntu",
            "ubuntu/",
            "/ubuntu",
            "a//b",
            "a/-b",
            "a/b_",
            "a/b...c",
            "a/b___c",
            "-registry.io/x",
            "registry.io:port/x",
            "ubuntu@sha256:abc",
            &format!("ubuntu@{SHORT}"),
            &format!("ubuntu@{}", DIGEST.to_uppercase()),
            "ubuntu@md5:0123456789abcdef0123456789abcdef",
            "[:]/b",
            "[::1]:5000/img",
            "ubuntu@:0123456789abcdef0123456789abcdef",
            &format!("ubuntu:{}", "t".repeat(129)),
            &format!("{}/x", "a".repeat(255)),
        ] {
            assert!(problem(r).is_some(), "{r}");
        }
    }

    #[test]
    fn a_tag_of_128_characters_and_a_name_of_255_are_taken() {
        assert_eq!(problem(&format!("ubuntu:{}", "t".repeat(128))), None);
        assert_eq!(problem(&"a".repeat(255)), None);
    }
}
