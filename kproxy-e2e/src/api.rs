//! A Kubernetes client that lives inside the control plane's network
//! namespace: a worker thread enters the namespace, so every socket its
//! client opens is there, and tests hand it operations over a channel.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A client for the e2e API server.
#[derive(Debug, Clone)]
pub struct Api {
    jobs: mpsc::Sender<Job>,
}

/// (group, version, plural, namespaced) of the kinds the harness writes.
fn resource_of(api_version: &str, kind: &str) -> Result<(ApiResource, bool), String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "Node" => ("nodes", false),
        "Namespace" => ("namespaces", false),
        "ConfigMap" => ("configmaps", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        other => return Err(format!("the e2e client does not write {other}")),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

fn api_for(client: Client, object: &Value) -> Result<(kube::Api<DynamicObject>, String), String> {
    let api_version = object["apiVersion"].as_str().ok_or("object without apiVersion")?;
    let kind = object["kind"].as_str().ok_or("object without kind")?;
    let (ar, namespaced) = resource_of(api_version, kind)?;
    let name = object["metadata"]["name"].as_str().ok_or("object without a name")?.to_string();
    let api = if namespaced {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("default");
        kube::Api::namespaced_with(client, ns, &ar)
    } else {
        kube::Api::all_with(client, &ar)
    };
    Ok((api, name))
}

impl Api {
    /// A client from `kubeconfig`, living in the named network namespace.
    pub fn connect(netns: &str, kubeconfig: &Path) -> Result<Api, String> {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).map_err(|e| format!("{netns}: {e}"))?;
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let setup = (|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
                let client = rt.block_on(async {
                    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(|e| e.to_string())?;
                    Client::try_from(config).map_err(|e| e.to_string())
                })?;
                Ok::<_, String>((rt, client))
            })();
            let (rt, client) = match setup {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok(job) = queue.recv() {
                rt.block_on(job(client.clone()));
            }
        });
        ready.recv().map_err(|_| "the API thread died".to_string())??;
        Ok(Api { jobs })
    }

    /// Runs `f` with the client on the API thread and returns its result.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, String>> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(f(client).await);
            })
        });
        self.jobs.send(job).map_err(|_| "the API thread is gone".to_string())?;
        rx.recv().map_err(|_| "the API call was dropped".to_string())?
    }

    /// Creates or updates an object (server-side apply, forced), returning
    /// it as stored.
    pub fn apply(&self, object: impl serde::Serialize) -> Result<Value, String> {
        let object = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.call(move |client| async move {
            let (api, name) = api_for(client, &object)?;
            let params = PatchParams::apply("kproxy-e2e").force();
            let stored = api.patch(&name, &params, &Patch::Apply(&object)).await.map_err(|e| format!("apply {name}: {e}"))?;
            serde_json::to_value(stored).map_err(|e| e.to_string())
        })
    }

    /// Creates an object, or replaces it whole (status included, where the
    /// API keeps status on create, as for Nodes). For objects server-side
    /// apply cannot take (a Node's addresses repeat their merge key).
    pub fn put(&self, object: impl serde::Serialize) -> Result<(), String> {
        let mut object = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.call(move |client| async move {
            let (api, name) = api_for(client, &object)?;
            let as_dynamic = |o: &Value| serde_json::from_value::<DynamicObject>(o.clone()).map_err(|e| e.to_string());
            match api.get_opt(&name).await.map_err(|e| format!("get {name}: {e}"))? {
                None => {
                    api.create(&Default::default(), &as_dynamic(&object)?).await.map_err(|e| format!("create {name}: {e}"))?;
                }
                Some(existing) => {
                    object["metadata"]["resourceVersion"] = serde_json::json!(existing.metadata.resource_version);
                    let stored = api.replace(&name, &Default::default(), &as_dynamic(&object)?).await.map_err(|e| format!("replace {name}: {e}"))?;
                    object["metadata"]["resourceVersion"] = serde_json::json!(stored.metadata.resource_version);
                    api.replace_status(&name, &Default::default(), &as_dynamic(&object)?).await.map_err(|e| format!("replace status of {name}: {e}"))?;
                }
            }
            Ok(())
        })
    }

    /// Applies many objects, `concurrency` requests in flight at a time
    /// (bulk set-up for benchmarks).
    pub fn apply_many(&self, objects: Vec<Value>, concurrency: usize) -> Result<(), String> {
        use futures::StreamExt;
        self.call(move |client| async move {
            let results: Vec<Result<(), String>> = futures::stream::iter(objects)
                .map(|object| {
                    let client = client.clone();
                    async move {
                        let (api, name) = api_for(client, &object)?;
                        let params = PatchParams::apply("kproxy-e2e").force();
                        api.patch(&name, &params, &Patch::Apply(&object)).await.map_err(|e| format!("apply {name}: {e}"))?;
                        Ok(())
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            results.into_iter().collect()
        })
    }

    /// Applies an object's `status` (a Service's load-balancer ingress, a
    /// Node's addresses).
    pub fn apply_status(&self, object: impl serde::Serialize) -> Result<(), String> {
        let object = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.call(move |client| async move {
            let (api, name) = api_for(client, &object)?;
            let patch = serde_json::json!({
                "apiVersion": object["apiVersion"], "kind": object["kind"],
                "metadata": {"name": name}, "status": object["status"],
            });
            let params = PatchParams::apply("kproxy-e2e").force();
            api.patch_status(&name, &params, &Patch::Apply(&patch)).await.map_err(|e| format!("apply status of {name}: {e}"))?;
            Ok(())
        })
    }

    /// Deletes an object (given as its JSON, or any value with apiVersion,
    /// kind and metadata); a missing object is not an error.
    pub fn delete(&self, object: impl serde::Serialize) -> Result<(), String> {
        let object = serde_json::to_value(object).map_err(|e| e.to_string())?;
        self.call(move |client| async move {
            let (api, name) = api_for(client, &object)?;
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(format!("delete {name}: {e}")),
            }
        })
    }

    /// Applies every document of a YAML file.
    pub fn apply_file(&self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            self.apply(doc)?;
        }
        Ok(())
    }

    /// Creates a namespace if missing.
    pub fn namespace(&self, name: &str) -> Result<(), String> {
        self.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).map(|_| ())
    }
}
