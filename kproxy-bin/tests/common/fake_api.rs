//! A fake Kubernetes API server for the binary's cluster-mode tests: just
//! enough of list, watch and streaming lists (a watch with
//! `sendInitialEvents=true`, as Kubernetes 1.34 serves it) for Services,
//! EndpointSlices, Nodes and ServiceCIDRs, with the failure modes kproxy
//! must survive (410 Gone, an unreachable server, a slow initial list, a
//! server that refuses streaming lists).
//!
//! It listens on loopback inside a test's network namespace, so kproxy
//! running there reaches it and nothing outside does. Plain blocking
//! HTTP/1.1, one thread per connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// `/api/v1/services`.
    Services,
    /// `/apis/discovery.k8s.io/v1/endpointslices`.
    EndpointSlices,
    /// `/api/v1/nodes`.
    Nodes,
    /// `/apis/networking.k8s.io/v1/servicecidrs`.
    ServiceCidrs,
}

impl Resource {
    fn of_kind(kind: &str) -> Resource {
        match kind {
            "Service" => Resource::Services,
            "EndpointSlice" => Resource::EndpointSlices,
            "Node" => Resource::Nodes,
            "ServiceCIDR" => Resource::ServiceCidrs,
            other => panic!("the fake API does not serve {other}"),
        }
    }

    fn of_path(path: &str) -> Option<(Resource, Option<String>)> {
        let (resource, rest) = if let Some(r) = path.strip_prefix("/api/v1/services") {
            (Resource::Services, r)
        } else if let Some(r) = path.strip_prefix("/apis/discovery.k8s.io/v1/endpointslices") {
            (Resource::EndpointSlices, r)
        } else if let Some(r) = path.strip_prefix("/api/v1/nodes") {
            (Resource::Nodes, r)
        } else if let Some(r) = path.strip_prefix("/apis/networking.k8s.io/v1/servicecidrs") {
            (Resource::ServiceCidrs, r)
        } else {
            return None;
        };
        Some((resource, rest.strip_prefix('/').map(str::to_string)))
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Resource::Services => ("v1", "ServiceList"),
            Resource::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Resource::Nodes => ("v1", "NodeList"),
            Resource::ServiceCidrs => ("networking.k8s.io/v1", "ServiceCIDRList"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Resource, String), Value>,
    log: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from an older resourceVersion get 410 Gone.
    oldest: u64,
    /// Bumped to end every open watch with 410 Gone.
    epoch: u64,
    /// Lists (and streaming lists) of these resources wait until ungated.
    gated: BTreeSet<Resource>,
    /// The targets of the requests that accepted a gzip answer.
    gzip: Vec<String>,
    /// Refuse every connection and drop open ones.
    down: bool,
    /// Every request line seen (`POST <target>` for POSTs, the target
    /// alone for GETs).
    requests: Vec<String>,
    /// The bodies POSTed (Events).
    posted: Vec<Value>,
}

/// The fake server; stops with the test process.
#[derive(Debug, Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// The URL kproxy should use.
    pub url: String,
}

fn name_of(o: &Value) -> String {
    let m = &o["metadata"];
    format!("{}/{}", m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""))
}

impl FakeApi {
    /// Starts the server on 127.0.0.1 inside the named network namespace.
    pub fn start_in_netns(netns: &str) -> FakeApi {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
        let listener = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("127.0.0.1:0").unwrap()
        })
        .join()
        .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = FakeApi { state: Arc::default(), url };
        let server = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if server.state.lock().unwrap().down {
                    continue; // dropped: connection reset
                }
                let server = server.clone();
                std::thread::spawn(move || server.handle(conn));
            }
        });
        api
    }

    /// Adds or replaces an object (`kind` decides the resource).
    pub fn put(&self, object: impl serde::Serialize) {
        let mut o = serde_json::to_value(object).unwrap();
        let resource = Resource::of_kind(o["kind"].as_str().unwrap());
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        o["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let key = (resource, name_of(&o));
        let kind = if s.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        s.objects.insert(key, o.clone());
        let rv = s.rv;
        s.log.push((rv, resource, kind, o));
    }

    /// Deletes an object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let Some(mut o) = s.objects.remove(&(resource, format!("{namespace}/{name}"))) else { return };
        s.rv += 1;
        o["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let rv = s.rv;
        s.log.push((rv, resource, "DELETED", o));
    }

    /// Ends every open watch with 410 Gone and forgets the history, so the
    /// changes made until the next relist are seen only by listing.
    pub fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        s.epoch += 1;
        s.oldest = s.rv + 1;
    }

    /// Makes lists of `resource` wait (true) or answer (false).
    pub fn gate(&self, resource: Resource, closed: bool) {
        let mut s = self.state.lock().unwrap();
        if closed {
            s.gated.insert(resource);
        } else {
            s.gated.remove(&resource);
        }
    }

    /// The targets of the requests that accepted a gzip answer.
    pub fn accepted_gzip(&self) -> Vec<String> {
        self.state.lock().unwrap().gzip.clone()
    }

    /// Takes the server down (every connection refused or dropped) or
    /// back up.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Every request line seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The objects POSTed so far.
    pub fn posted(&self) -> Vec<Value> {
        self.state.lock().unwrap().posted.clone()
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(path, text).unwrap();
    }

    fn handle(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut conn = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            // Headers; a body only for POSTs (Events).
            let mut length = 0usize;
            let mut gzip = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if name.eq_ignore_ascii_case("accept-encoding") && value.contains("gzip") {
                        gzip = true;
                    }
                }
            }
            let method = line.split_whitespace().next().unwrap_or("GET").to_string();
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            if method == "POST" {
                let mut body = vec![0u8; length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                let posted: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut s = self.state.lock().unwrap();
                s.requests.push(format!("POST {target}"));
                s.posted.push(posted.clone());
                drop(s);
                respond(&mut conn, 201, &posted);
                continue;
            }
            let mut s = self.state.lock().unwrap();
            s.requests.push(target.clone());
            if gzip {
                s.gzip.push(target.clone());
            }
            drop(s);
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let params: BTreeMap<String, String> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect();
            let Some((resource, name)) = Resource::of_path(path) else {
                respond(&mut conn, 404, &status(404, "NotFound", "no such path"));
                continue;
            };
            if let Some(name) = name {
                let s = self.state.lock().unwrap();
                match s.objects.get(&(resource, format!("/{name}"))) {
                    Some(o) => respond(&mut conn, 200, o),
                    None => respond(&mut conn, 404, &status(404, "NotFound", "not found")),
                }
                continue;
            }
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let initial = params.get("sendInitialEvents").is_some_and(|v| v == "true");
                self.watch(conn, resource, &params, initial);
                return;
            }
            while self.state.lock().unwrap().gated.contains(&resource) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let s = self.state.lock().unwrap();
            let items: Vec<Value> = s.objects.iter().filter(|((r, _), o)| *r == resource && matches(o, &params)).map(|(_, o)| o.clone()).collect();
            // Pages: `limit` items from the offset a `continue` token
            // names (the token is the offset).
            let from: usize = params.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
            let limit: usize = params.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
            let more = items.len() > from.saturating_add(limit);
            let items: Vec<Value> = items.into_iter().skip(from).take(limit).collect();
            let (api_version, kind) = resource.list_kind();
            let mut metadata = json!({"resourceVersion": s.rv.to_string()});
            if more {
                metadata["continue"] = json!((from + limit).to_string());
            }
            let list = json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items});
            drop(s);
            respond(&mut conn, 200, &list);
        }
    }

    /// A watch; with `initial` (a streaming list), first every current
    /// object as `ADDED` and a bookmark marking their end.
    fn watch(&self, mut conn: TcpStream, resource: Resource, params: &BTreeMap<String, String>, initial: bool) {
        let mut cursor: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let epoch = self.state.lock().unwrap().epoch;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        if initial {
            while self.state.lock().unwrap().gated.contains(&resource) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let (mut events, rv) = {
                let s = self.state.lock().unwrap();
                let events: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((r, _), o)| *r == resource && matches(o, params))
                    .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                    .collect();
                (events, s.rv)
            };
            let (api_version, kind) = resource.list_kind();
            let end = json!({"apiVersion": api_version, "kind": kind.trim_end_matches("List"),
                "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            events.push(json!({"type": "BOOKMARK", "object": end}));
            if write_events(&mut conn, events).is_err() {
                return;
            }
            cursor = rv;
        }
        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
        loop {
            let (events, end) = {
                let s = self.state.lock().unwrap();
                if s.down {
                    return; // dropped mid-stream
                }
                if cursor + 1 < s.oldest || s.epoch != epoch {
                    (vec![gone.clone()], true)
                } else {
                    let events: Vec<Value> = s
                        .log
                        .iter()
                        .filter(|(rv, r, _, o)| *rv > cursor && *r == resource && matches(o, params))
                        .map(|(_, _, kind, o)| json!({"type": kind, "object": o}))
                        .collect();
                    cursor = s.rv;
                    (events, false)
                }
            };
            if write_events(&mut conn, events).is_err() {
                return;
            }
            if end {
                let _ = conn.write_all(b"0\r\n\r\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The (API group, resource, verb) RBAC needs for a request line.
pub fn rbac_of(request: &str) -> (String, String, String) {
    if let Some(target) = request.strip_prefix("POST ") {
        let path = target.split('?').next().unwrap_or_default();
        let resource = if path.starts_with("/apis/events.k8s.io/v1/namespaces/") && path.ends_with("/events") { "events" } else { panic!("unexpected POST {target}") };
        return ("events.k8s.io".into(), resource.into(), "create".into());
    }
    let (path, query) = request.split_once('?').unwrap_or((request, ""));
    let (resource, name) = Resource::of_path(path).unwrap_or_else(|| panic!("unexpected request {request}"));
    let (group, plural) = match resource {
        Resource::Services => ("", "services"),
        Resource::EndpointSlices => ("discovery.k8s.io", "endpointslices"),
        Resource::Nodes => ("", "nodes"),
        Resource::ServiceCidrs => ("networking.k8s.io", "servicecidrs"),
    };
    let verb = if name.is_some() {
        "get"
    } else if query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
        "watch"
    } else {
        "list"
    };
    (group.to_string(), plural.to_string(), verb.to_string())
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

/// Writes watch events, one JSON line per chunk.
fn write_events(conn: &mut TcpStream, events: Vec<Value>) -> std::io::Result<()> {
    for e in events {
        let line = format!("{e}\n");
        conn.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())?;
    }
    Ok(())
}

fn respond(conn: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let text = match code {
        200 => "OK",
        201 => "Created",
        _ => "Error",
    };
    let _ = conn.write_all(format!("HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object passes the request's label selector (`!key` terms)
/// and field selector (`metadata.name=NAME`).
fn matches(o: &Value, params: &BTreeMap<String, String>) -> bool {
    let labels = &o["metadata"]["labels"];
    let labels_ok = params.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|t| !t.is_empty()).all(|term| match term.strip_prefix('!') {
            Some(key) => labels.get(key).is_none(),
            None => panic!("the fake API supports only `!key` selectors, not {term:?}"),
        })
    });
    let fields_ok = params.get("fieldSelector").is_none_or(|sel| match sel.strip_prefix("metadata.name=") {
        Some(name) => o["metadata"]["name"].as_str() == Some(name),
        None => panic!("the fake API supports only metadata.name field selectors, not {sel:?}"),
    });
    labels_ok && fields_ok
}
