//! A test double of the Kubernetes API server for taskd-node's tests.
//!
//! There is no API server binary to be had on this machine (no kube-apiserver, etcd, kind or
//! envtest assets, and no network to fetch them), so this small HTTP/1.1 server plays one: it
//! records every request, keeps Nodes, RuntimeClasses, Events and Pods in memory, applies JSON
//! merge patches to Nodes, filters lists by label selector, and answers 404 Status objects like
//! the real one. Pods are "run" the way a kubelet would on the node the pod names: the
//! container's command runs here with NODE_NAME set (its `/opt/taskd/bin/taskd-node` mapped to
//! the binary under test), and the pod's phase follows its exit status.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

#[derive(Default)]
pub struct World {
    pub requests: Vec<Request>,
    pub nodes: BTreeMap<String, Value>,
    pub classes: BTreeMap<String, Value>,
    pub events: Vec<Value>,
    pub pods: BTreeMap<String, Value>,
    /// Each node's `/` for the pods the double runs (their `--host-root=` is replaced).
    pub host_roots: BTreeMap<String, PathBuf>,
    version: u64,
}

impl World {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }
}

pub struct ApiServer {
    pub url: String,
    pub world: Arc<Mutex<World>>,
    /// What `/opt/taskd/bin/taskd-node` in a pod's command runs here.
    pub agent_binary: PathBuf,
    /// KUBECONFIG for the processes the pods start.
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts serving on a free loopback port; writes a kubeconfig pointing at it in `dir`.
    pub fn start(dir: &std::path::Path, agent_binary: PathBuf) -> Arc<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind api server double");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {url}\n\
                 users:\n- name: agent\n  user:\n    token: test-token\n\
                 contexts:\n- name: double\n  context:\n    cluster: double\n    user: agent\n\
                 current-context: double\n"
            ),
        )
        .expect("write kubeconfig");
        let server = Arc::new(ApiServer {
            url,
            world: Arc::new(Mutex::new(World::default())),
            agent_binary,
            kubeconfig,
        });
        let s = server.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || s.serve(conn));
            }
        });
        server
    }

    pub fn add_node(&self, name: &str, labels: Value) {
        let mut w = self.world.lock().unwrap();
        let rv = w.next_version();
        w.nodes.insert(
            name.into(),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv,
                "labels": labels, "annotations": {}}}),
        );
    }

    pub fn add_class(&self, name: &str, handler: &str, labels: Value) {
        let mut w = self.world.lock().unwrap();
        let rv = w.next_version();
        w.classes.insert(
            name.into(),
            json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                   "metadata": {"name": name, "resourceVersion": rv, "labels": labels},
                   "handler": handler}),
        );
    }

    /// Requests whose method is `method` and path contains `part`.
    pub fn requests(&self, method: &str, part: &str) -> Vec<Request> {
        let w = self.world.lock().unwrap();
        w.requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(part))
            .cloned()
            .collect()
    }

    pub fn node(&self, name: &str) -> Value {
        self.world.lock().unwrap().nodes[name].clone()
    }

    pub fn class(&self, name: &str) -> Option<Value> {
        self.world.lock().unwrap().classes.get(name).cloned()
    }

    /// The reasons of the Events recorded so far, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        let w = self.world.lock().unwrap();
        w.events
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        self.world.lock().unwrap().events.clone()
    }

    fn serve(self: Arc<Self>, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
        let mut conn = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut length = 0usize;
            let mut chunked = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                    chunked = true;
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap_or(0);
                    let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0; n + 2];
                    if reader.read_exact(&mut chunk).is_err() {
                        return;
                    }
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                body.resize(length, 0);
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
            }
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), q.to_string()),
                None => (target.clone(), String::new()),
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let req = Request {
                method,
                path,
                query,
                body,
            };
            let (code, resp) = self.handle(&req);
            self.world.lock().unwrap().requests.push(req);
            let text = resp.to_string();
            let reason = if code < 300 { "OK" } else { "Error" };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if conn.write_all(head.as_bytes()).is_err() || conn.write_all(text.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn handle(self: &Arc<Self>, r: &Request) -> (u16, Value) {
        let selector = selector(&r.query);
        let segs: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
        let mut w = self.world.lock().unwrap();
        match (r.method.as_str(), segs.as_slice()) {
            ("GET", ["api", "v1", "nodes"]) => {
                let items: Vec<Value> = w
                    .nodes
                    .values()
                    .filter(|n| matches(n, &selector))
                    .cloned()
                    .collect();
                (200, list("NodeList", "v1", items))
            }
            ("GET", ["api", "v1", "nodes", name]) => match w.nodes.get(*name) {
                Some(n) => (200, n.clone()),
                None => not_found("nodes", name),
            },
            ("PATCH", ["api", "v1", "nodes", name]) => {
                let rv = w.next_version();
                match w.nodes.get_mut(*name) {
                    Some(n) => {
                        merge_patch(n, &r.body);
                        n["metadata"]["resourceVersion"] = json!(rv);
                        (200, n.clone())
                    }
                    None => not_found("nodes", name),
                }
            }
            ("GET", ["apis", "node.k8s.io", "v1", "runtimeclasses"]) => {
                let items: Vec<Value> = w
                    .classes
                    .values()
                    .filter(|n| matches(n, &selector))
                    .cloned()
                    .collect();
                (200, list("RuntimeClassList", "node.k8s.io/v1", items))
            }
            ("GET", ["apis", "node.k8s.io", "v1", "runtimeclasses", name]) => match w.classes.get(*name) {
                Some(c) => (200, c.clone()),
                None => not_found("runtimeclasses.node.k8s.io", name),
            },
            ("POST", ["apis", "node.k8s.io", "v1", "runtimeclasses"]) => {
                let name = r.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if w.classes.contains_key(&name) {
                    return (409, status(409, "AlreadyExists", &name));
                }
                let mut c = r.body.clone();
                c["metadata"]["resourceVersion"] = json!(w.next_version());
                w.classes.insert(name, c.clone());
                (201, c)
            }
            ("PUT", ["apis", "node.k8s.io", "v1", "runtimeclasses", name]) => {
                if !w.classes.contains_key(*name) {
                    return not_found("runtimeclasses.node.k8s.io", name);
                }
                let mut c = r.body.clone();
                c["metadata"]["resourceVersion"] = json!(w.next_version());
                w.classes.insert(name.to_string(), c.clone());
                (200, c)
            }
            ("DELETE", ["apis", "node.k8s.io", "v1", "runtimeclasses", name]) => {
                match w.classes.remove(*name) {
                    Some(c) => (200, c),
                    None => not_found("runtimeclasses.node.k8s.io", name),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
                let mut e = r.body.clone();
                let name = format!(
                    "{}{}",
                    e["metadata"]["generateName"].as_str().unwrap_or("event."),
                    w.events.len()
                );
                e["metadata"]["name"] = json!(name);
                e["metadata"]["namespace"] = json!(ns);
                w.events.push(e.clone());
                (201, e)
            }
            ("POST", ["api", "v1", "namespaces", _, "pods"]) => {
                let name = r.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut p = r.body.clone();
                p["status"] = json!({"phase": "Pending"});
                w.pods.insert(name.clone(), p.clone());
                drop(w);
                self.run_pod(name, r.body.clone());
                (201, p)
            }
            ("GET", ["api", "v1", "namespaces", _, "pods", name]) => match w.pods.get(*name) {
                Some(p) => (200, p.clone()),
                None => not_found("pods", name),
            },
            ("DELETE", ["api", "v1", "namespaces", _, "pods", name]) => match w.pods.remove(*name) {
                Some(p) => (200, p),
                None => not_found("pods", name),
            },
            _ => (404, status(404, "NotFound", &format!("{} {}", r.method, r.path))),
        }
    }

    /// Plays the kubelet of the pod's node: runs its container's command here.
    fn run_pod(self: &Arc<Self>, name: String, pod: Value) {
        let s = self.clone();
        thread::spawn(move || {
            let c = &pod["spec"]["containers"][0];
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
            let root = s.world.lock().unwrap().host_roots.get(&node).cloned();
            let args: Vec<String> = c["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect::<Vec<String>>()
                })
                .unwrap_or_default()
                .into_iter()
                .map(|a| match &root {
                    Some(r) if a.starts_with("--host-root=") => format!("--host-root={}", r.display()),
                    _ => a,
                })
                .collect();
            assert_eq!(c["command"][0], "/opt/taskd/bin/taskd-node", "pod command");
            let out = std::process::Command::new(&s.agent_binary)
                .args(&args)
                .env("NODE_NAME", &node)
                .env("KUBECONFIG", &s.kubeconfig)
                .output()
                .expect("run the pod's command");
            let phase = if out.status.success() {
                "Succeeded"
            } else {
                "Failed"
            };
            eprintln!(
                "pod {name} on {node}: {phase}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if let Some(p) = s.world.lock().unwrap().pods.get_mut(&name) {
                p["status"]["phase"] = json!(phase);
            }
        });
    }
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn status(code: u16, reason: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason,
           "code": code, "message": format!("{name}: {reason}")})
}

fn not_found(resource: &str, name: &str) -> (u16, Value) {
    (
        404,
        status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
    )
}

/// `labelSelector` of a query: `key` (exists) or `key=value`, comma-separated.
fn selector(query: &str) -> Vec<(String, Option<String>)> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("labelSelector="))
        .flat_map(|s| {
            let s = s
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2C", ",");
            s.split(',')
                .map(|term| match term.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (term.to_string(), None),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn matches(obj: &Value, selector: &[(String, Option<String>)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| match (&obj["metadata"]["labels"][k], v) {
            (Value::String(have), Some(want)) => have == want,
            (Value::String(_), None) => true,
            _ => false,
        })
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
