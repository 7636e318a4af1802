//! Images and a registry for integration tests.
//!
//! - [`LayerBuilder`]: a layer as a tar (or tar+gzip) built in memory with the `tar` and
//!   `flate2` crates: directories, files, symlinks, hardlinks, whiteouts, and raw entries
//!   whose name is written unchecked (for hostile-layer tests: `../x`, `/abs`).
//!   [`LayerBuilder::busybox`] is a minimal rootfs from the host's busybox-static.
//! - [`ImageBuilder`]: layers + an OCI config (Entrypoint/Cmd/Env/WorkingDir/User) → blobs,
//!   manifest, and optionally a multi-arch index; [`OciLayout`] writes an OCI image layout
//!   directory (and can tar it for `ctr images import`).
//! - [`Registry`]: `docker-registry` (apt `docker-registry`) on 127.0.0.1 with a free port
//!   and a temp storage dir; [`Registry::push`] copies a layout tag into it with `skopeo`
//!   (apt `skopeo`). Drop kills the registry by pid and removes its dir.
//!
//! ```ignore
//! let reg = support::registry::Registry::start();
//! let image = reg.push_busybox("busybox", "latest");   // "127.0.0.1:PORT/busybox:latest"
//! ```
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// `sha256:<hex>` of the bytes.
pub fn sha256(data: &[u8]) -> String {
    let sum = sha2::Sha256::digest(data);
    let mut s = String::from("sha256:");
    for b in sum {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// gzip of the bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    CharDevice(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    /// Write the name bytes unchecked (hostile layers).
    raw: bool,
}

/// A layer built in memory. Paths are relative (`bin/sh`); entries are written in order.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, path: &str, kind: Kind, mode: u32) -> Self {
        self.entries.push(Entry {
            path: path.to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            raw: false,
        });
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.push(path, Kind::Dir, 0o755)
    }

    pub fn dir_mode(self, path: &str, mode: u32) -> Self {
        self.push(path, Kind::Dir, mode)
    }

    pub fn file(self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.push(path, Kind::File(data.into()), 0o644)
    }

    pub fn file_mode(self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.push(path, Kind::File(data.into()), mode)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Symlink(target.to_owned()), 0o777)
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.push(path, Kind::Hardlink(target.to_owned()), 0o644)
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.push(path, Kind::CharDevice(major, minor), 0o666)
    }

    pub fn fifo(self, path: &str) -> Self {
        self.push(path, Kind::Fifo, 0o644)
    }

    /// An OCI whiteout for `path` (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), Vec::new())
    }

    /// An opaque-directory marker for `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), Vec::new())
    }

    /// A file entry whose name is written as given, unchecked (`../escape`, `/abs`).
    pub fn raw_file(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self = self.file(path, data);
        if let Some(e) = self.entries.last_mut() {
            e.raw = true;
        }
        self
    }

    /// A symlink entry whose name is written unchecked.
    pub fn raw_symlink(mut self, path: &str, target: &str) -> Self {
        self = self.symlink(path, target);
        if let Some(e) = self.entries.last_mut() {
            e.raw = true;
        }
        self
    }

    /// A hardlink entry whose name (and target) are written unchecked.
    pub fn raw_hardlink(mut self, path: &str, target: &str) -> Self {
        self = self.hardlink(path, target);
        if let Some(e) = self.entries.last_mut() {
            e.raw = true;
        }
        self
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        if let Some(e) = self.entries.last_mut() {
            e.uid = uid;
            e.gid = gid;
        }
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(1_700_000_000);
            let data: &[u8] = match &e.kind {
                Kind::File(d) => d,
                _ => &[],
            };
            match &e.kind {
                Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
                Kind::File(_) => h.set_entry_type(tar::EntryType::Regular),
                Kind::Symlink(_) => h.set_entry_type(tar::EntryType::Symlink),
                Kind::Hardlink(_) => h.set_entry_type(tar::EntryType::Link),
                Kind::CharDevice(maj, min) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_device_major(*maj).expect("major");
                    h.set_device_minor(*min).expect("minor");
                }
                Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            }
            h.set_size(data.len() as u64);
            let link = match &e.kind {
                Kind::Symlink(t) | Kind::Hardlink(t) => Some(t.as_str()),
                _ => None,
            };
            let path = match &e.kind {
                Kind::Dir if !e.path.ends_with('/') => format!("{}/", e.path),
                _ => e.path.clone(),
            };
            if e.raw {
                let name = path.as_bytes();
                assert!(name.len() < 100, "raw entry names must be < 100 bytes");
                let old = h.as_old_mut();
                old.name = [0; 100];
                old.name[..name.len()].copy_from_slice(name);
                if let Some(t) = link {
                    let t = t.as_bytes();
                    assert!(t.len() < 100, "raw link targets must be < 100 bytes");
                    old.linkname = [0; 100];
                    old.linkname[..t.len()].copy_from_slice(t);
                }
                h.set_cksum();
                b.append(&h, data).expect("append raw entry");
            } else if let Some(t) = link {
                b.append_link(&mut h, &path, t).expect("append link");
            } else {
                b.append_data(&mut h, &path, data).expect("append entry");
            }
        }
        b.into_inner().expect("finish tar")
    }

    /// The tar, gzipped.
    pub fn tar_gz(&self) -> Vec<u8> {
        gzip(&self.tar())
    }

    /// A minimal rootfs: /bin/busybox (from busybox-static) with every applet as a symlink,
    /// /etc/passwd, /etc/group, /etc/hosts, /tmp, /root, /home, /proc, /sys, /dev, /var.
    pub fn busybox() -> LayerBuilder {
        let bin = Path::new("/bin/busybox");
        let data = std::fs::read(bin).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (install busybox-static: apt-get install busybox-static)",
                bin.display()
            )
        });
        let out = Command::new(bin).arg("--list").output().expect("busybox --list");
        let mut l = LayerBuilder::new()
            .dir("bin")
            .dir("etc")
            .dir("root")
            .dir_mode("tmp", 0o1777)
            .dir("home")
            .dir("proc")
            .dir("sys")
            .dir("dev")
            .dir("var")
            .file_mode("bin/busybox", data, 0o755)
            .file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
            )
            .file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
            .file("etc/hosts", "127.0.0.1 localhost\n");
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" {
                continue;
            }
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
        l
    }
}

/// A blob with its descriptor fields.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256(&data),
            data,
        }
    }

    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }
}

/// An image's process config and layers.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    pub layers: Vec<LayerBuilder>,
    pub gzip: bool,
    pub architecture: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            gzip: true,
            architecture: "amd64".into(),
            entrypoint: Vec::new(),
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: "/".into(),
            user: String::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// A built single-platform image: config, layers, manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
    pub architecture: String,
}

impl BuiltImage {
    /// Every blob (manifest, config, layers).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.manifest, &self.config];
        v.extend(self.layers.iter());
        v
    }
}

impl ImageBuilder {
    /// The busybox image: one busybox layer, `Cmd ["sh"]`.
    pub fn busybox() -> ImageBuilder {
        ImageBuilder {
            layers: vec![LayerBuilder::busybox()],
            cmd: vec!["sh".into()],
            ..Default::default()
        }
    }

    pub fn build(&self) -> BuiltImage {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut history = Vec::new();
        for l in &self.layers {
            let tar = l.tar();
            diff_ids.push(sha256(&tar));
            history.push(
                serde_json::json!({"created": "2024-01-01T00:00:00Z", "created_by": "taskd test harness"}),
            );
            layers.push(if self.gzip {
                Blob::new(MEDIA_LAYER_GZIP, gzip(&tar))
            } else {
                Blob::new(MEDIA_LAYER_TAR, tar)
            });
        }
        let mut cfg = serde_json::Map::new();
        if !self.entrypoint.is_empty() {
            cfg.insert("Entrypoint".into(), serde_json::json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            cfg.insert("Cmd".into(), serde_json::json!(self.cmd));
        }
        cfg.insert("Env".into(), serde_json::json!(self.env));
        if !self.working_dir.is_empty() {
            cfg.insert("WorkingDir".into(), serde_json::json!(self.working_dir));
        }
        if !self.user.is_empty() {
            cfg.insert("User".into(), serde_json::json!(self.user));
        }
        if !self.labels.is_empty() {
            cfg.insert("Labels".into(), serde_json::json!(self.labels));
        }
        let config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&config).expect("config json"));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            MEDIA_MANIFEST,
            serde_json::to_vec(&manifest).expect("manifest json"),
        );
        BuiltImage {
            config,
            layers,
            manifest,
            architecture: self.architecture.clone(),
        }
    }
}

/// A multi-platform index over built images.
pub fn index(images: &[&BuiltImage]) -> Blob {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            d["platform"] = serde_json::json!({"architecture": i.architecture, "os": "linux"});
            d
        })
        .collect();
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": manifests,
    });
    Blob::new(MEDIA_INDEX, serde_json::to_vec(&idx).expect("index json"))
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
pub struct OciLayout {
    pub dir: PathBuf,
    tags: Vec<(String, Blob)>,
    _tmp: Option<tempfile::TempDir>,
}

impl OciLayout {
    /// A layout in a new temp dir (removed on drop).
    pub fn new() -> OciLayout {
        let tmp = tempfile::Builder::new()
            .prefix("taskd-oci-")
            .tempdir()
            .expect("temp dir");
        let l = OciLayout {
            dir: tmp.path().to_owned(),
            tags: Vec::new(),
            _tmp: Some(tmp),
        };
        std::fs::create_dir_all(l.dir.join("blobs/sha256")).expect("mkdir blobs");
        std::fs::write(l.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        l
    }

    pub fn add_blob(&mut self, b: &Blob) {
        let p = self.dir.join("blobs/sha256").join(&b.digest["sha256:".len()..]);
        std::fs::write(p, &b.data).expect("write blob");
    }

    /// Adds an image's blobs and tags its manifest.
    pub fn add_image(&mut self, tag: &str, image: &BuiltImage) {
        for b in image.blobs() {
            self.add_blob(b);
        }
        self.tag(tag, image.manifest.clone());
    }

    /// Adds every image and an index over them, tagged.
    pub fn add_index(&mut self, tag: &str, images: &[&BuiltImage]) -> Blob {
        for i in images {
            for b in i.blobs() {
                self.add_blob(b);
            }
        }
        let idx = index(images);
        self.add_blob(&idx);
        self.tag(tag, idx.clone());
        idx
    }

    fn tag(&mut self, tag: &str, target: Blob) {
        self.tags.retain(|(t, _)| t != tag);
        self.tags.push((tag.to_owned(), target));
        let manifests: Vec<serde_json::Value> = self
            .tags
            .iter()
            .map(|(t, b)| {
                let mut d = b.descriptor();
                d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
                d
            })
            .collect();
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).expect("json"),
        )
        .expect("index.json");
    }

    /// The layout as a tar archive (for `ctr images import`).
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", &self.dir).expect("tar layout");
        b.into_inner().expect("finish tar")
    }
}

/// How long the registry may take to answer.
const REGISTRY_START: Duration = Duration::from_secs(20);

/// The user of [`Registry::start_basic_auth`].
pub const AUTH_USER: &str = "taskd";
/// Its password.
pub const AUTH_PASSWORD: &str = "s3cret";
/// bcrypt (cost 4) of [`AUTH_PASSWORD`], as docker-registry's htpasswd file wants it.
const AUTH_BCRYPT: &str = "$2a$04$ZPja7dgtKaJaWxZdbbtTcOg3NThqPAzJlTkZ8iWM/EK7U/AEldJ5m";

/// A `docker-registry` on 127.0.0.1:<free port>, storage in a temp dir.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: PathBuf,
    /// Credentials the registry requires (basic auth), if any.
    pub creds: Option<(String, String)>,
    /// The self-signed certificate (PEM) of a TLS registry.
    pub ca_cert: Option<PathBuf>,
    /// The client certificate and key (PEM) a registry from
    /// [`Registry::start_tls_client_auth`] requires.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

/// A self-signed certificate and key for `cn` (openssl CLI), into `cert` and `key`.
fn self_signed(cn: &str, cert: &Path, key: &Path, san: Option<&str>) {
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .arg("-subj")
        .arg(format!("/CN={cn}"));
    if let Some(san) = san {
        cmd.arg("-addext").arg(format!("subjectAltName={san}"));
    }
    let out = cmd
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Registry {
    /// Starts the registry and waits until `/v2/` answers.
    pub fn start() -> Registry {
        Registry::start_inner(false, false, false)
    }

    /// A registry that requires basic auth ([`AUTH_USER`] / [`AUTH_PASSWORD`], htpasswd).
    pub fn start_basic_auth() -> Registry {
        Registry::start_inner(true, false, false)
    }

    /// A registry over https with a self-signed certificate for 127.0.0.1 (made with the
    /// `openssl` CLI), in [`Registry::ca_cert`].
    pub fn start_tls() -> Registry {
        Registry::start_inner(false, true, false)
    }

    /// [`Registry::start_tls`] that also requires a client certificate (`http.tls.clientcas`:
    /// a self-signed client certificate, in [`Registry::client_cert`]).
    pub fn start_tls_client_auth() -> Registry {
        Registry::start_inner(false, true, true)
    }

    fn start_inner(basic_auth: bool, tls: bool, client_auth: bool) -> Registry {
        super::require(&[super::Need::Bin("docker-registry", "docker-registry")]);
        let dir = tempfile::Builder::new()
            .prefix("taskd-registry-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let port = super::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        let mut ca_cert = None;
        let mut client_cert = None;
        if tls {
            super::require(&[super::Need::Bin("openssl", "openssl")]);
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            self_signed("127.0.0.1", &cert, &key, Some("IP:127.0.0.1"));
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if client_auth {
                let (c, k) = (dir.join("client.cert"), dir.join("client.key"));
                self_signed("taskd-test-client", &c, &k, None);
                config.push_str(&format!("    clientcas:\n      - {}\n", c.display()));
                client_cert = Some((c, k));
            }
            ca_cert = Some(cert);
        }
        if basic_auth {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{AUTH_USER}:{AUTH_BCRYPT}\n")).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: taskd-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path = dir.join("config.yml");
        std::fs::write(&cfg_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut r = Registry {
            addr,
            dir,
            creds: basic_auth.then(|| (AUTH_USER.to_owned(), AUTH_PASSWORD.to_owned())),
            ca_cert,
            client_cert,
            child: Some(child),
        };
        let deadline = Instant::now() + REGISTRY_START;
        loop {
            // 401 = up, asking for credentials. Over TLS: listening (and a TLS error in the log
            // from this probe is harmless).
            let up = if tls {
                std::net::TcpStream::connect(&r.addr).is_ok()
            } else {
                matches!(super::http_get(&r.addr, "/v2/", None), Ok((200 | 401, _)))
            };
            if up {
                break;
            }
            if let Some(c) = r.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("docker-registry exited ({status}):\n{}", r.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer within {REGISTRY_START:?}:\n{}",
                    r.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many completed GET requests for blob `digest` the registry logged.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let path = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("response completed") && l.contains("GET") && l.contains(&path))
            .count()
    }

    /// Copies `layout:tag` to `<addr>/<repo>:<dest_tag>` with skopeo (all platforms of an
    /// index); returns the reference.
    pub fn push(&self, layout: &OciLayout, tag: &str, repo: &str, dest_tag: &str) -> String {
        super::require(&[super::Need::Bin("skopeo", "skopeo")]);
        let reference = format!("{}/{repo}:{dest_tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--dest-tls-verify=false", "--preserve-digests"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        if self.client_cert.is_some() {
            // docker's certs.d layout: client.cert + client.key (cert.pem / key.pem are ignored).
            cmd.arg("--dest-cert-dir").arg(&self.dir);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.dir.display()))
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        if !out.status.success() {
            panic!(
                "skopeo copy to {reference} failed ({}):\n{}\n{}\n--- registry log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        reference
    }

    /// Builds the busybox image, pushes it as `<repo>:<tag>`, returns (reference, image).
    pub fn push_busybox(&self, repo: &str, tag: &str) -> (String, BuiltImage) {
        let image = ImageBuilder::busybox().build();
        let mut layout = OciLayout::new();
        layout.add_image(tag, &image);
        (self.push(&layout, tag, repo, tag), image)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        super::remove_tree(&self.dir);
    }
}
