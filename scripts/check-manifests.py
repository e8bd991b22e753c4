"""Offline checks of the deployment manifests (no cluster here).

  check-manifests.py kustomize OVERLAY...        render each overlay (kubectl kustomize) and
                                                 validate it with kubernetes-validate --strict
  check-manifests.py keda FILE...                KEDA objects against KEDA's CRD schema (the
                                                 cloudcoil models generated from it), unknown keys
                                                 refused
  check-manifests.py runs MPCONNECT [--secrets FILE] (OVERLAY|COMPOSE)...
                                                 what each container is given (args, env, the
                                                 mounted config) is what the binary accepts:
                                                 `mpconnect <args> --help` and
                                                 `mpconnect validate --stage`; and no container
                                                 gets a secret its stage does not read. Secrets
                                                 an overlay leaves to the operator are taken
                                                 from the example FILE
  check-manifests.py images OVERLAY=IMAGE...     every Deployment the overlay renders runs IMAGE
  check-manifests.py policy OVERLAY...           what would break or endanger a live cluster:
                                                 replicas beside an autoscaler, scaling on retry
                                                 queues, queue URLs written twice, Ingress paths
                                                 beyond the API, preStop and grace periods too
                                                 short, no ALB readiness gate, no NetworkPolicy
                                                 for delivery's gRPC
  check-manifests.py queues (SCRIPT.sh|TEMPLATE.yaml)...
                                                 SQS settings that are safe with mpconnect's
                                                 retries: LocalStack's init script (run with a
                                                 recording awslocal) or a CloudFormation template
  check-manifests.py compose FILE INIT_SCRIPT     the compose stack: images pinned and supported,
                                                 LocalStack healthy only once its init script
                                                 has finished
  check-manifests.py dockerfile FILE             builder and runtime images pinned by version,
                                                 on the same Debian release (glibc)
  check-manifests.py alerts DIR|FILE...          PrometheusRule and ServiceMonitor against the
                                                 Prometheus Operator's CRD schema; every rule's
                                                 PromQL parses, names only metrics mpconnect
                                                 exports, and links to a runbook section

Each prints what it checked and exits 1 on the first file with a problem."""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

VENV_BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Objects of CRDs that kubernetes-validate does not know; checked by their own subcommands.
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
STAGES = {"ingest", "transform", "delivery", "all"}
# Env the binary (or a library it embeds) reads besides MPCONNECT__ overrides and the secret
# env vars its config names.
KNOWN_ENV = {"MPCONNECT_CONFIG", "MPCONNECT_LOG_FORMAT", "RUST_LOG"}
KNOWN_PREFIXES = ("OTEL_", "AWS_")


def render(overlay):
    kubectl = os.path.join(VENV_BIN, "kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", overlay], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{overlay}: kustomize cannot render it:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def load(path):
    if os.path.isdir(path):
        return render(path)
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomize(overlays):
    for overlay in overlays:
        docs = render(overlay)
        core = [d for d in docs if not d.get("apiVersion", "").startswith(CRD_GROUPS)]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(core, f)
            rendered = f.name
        result = subprocess.run(
            [os.path.join(VENV_BIN, "kubernetes-validate"), "--strict", "--quiet", rendered],
            capture_output=True,
            text=True,
            check=False,
        )
        os.unlink(rendered)
        if result.returncode != 0:
            sys.exit(f"{overlay}: kubernetes-validate --strict refused it:\n{result.stdout}{result.stderr}")
        print(f"{overlay}: renders; {len(core)} objects valid (kubernetes-validate --strict)")


def unknown_keys(given, kept, path="$"):
    """Keys in `given` the model did not keep: fields KEDA's schema does not have."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path]
        missing = []
        for key, value in given.items():
            if key not in kept:
                missing.append(f"{path}.{key}")
            else:
                missing.extend(unknown_keys(value, kept[key], f"{path}.{key}"))
        return missing
    if isinstance(given, list) and isinstance(kept, list):
        return [m for i, (g, k) in enumerate(zip(given, kept)) for m in unknown_keys(g, k, f"{path}[{i}]")]
    return []


def keda(paths):
    from cloudcoil.models.keda import v1alpha1

    for path in paths:
        checked = 0
        for doc in load(path):
            if not doc.get("apiVersion", "").startswith("keda.sh/"):
                continue
            model = getattr(v1alpha1, doc.get("kind", ""), None)
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if model is None:
                sys.exit(f"{name}: not a KEDA kind")
            try:
                parsed = model.model_validate(doc)
            except Exception as e:  # noqa: BLE001 - pydantic's error is the finding
                sys.exit(f"{name}: refused by KEDA's schema:\n{e}")
            unknown = unknown_keys(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
            if unknown:
                sys.exit(f"{name}: fields KEDA's schema does not have: {unknown}")
            for trigger in doc.get("spec", {}).get("triggers", []):
                metadata = trigger.get("metadata", {})
                if trigger.get("type") == "aws-sqs-queue":
                    for key in ("queueLength", "awsRegion", "scaleOnInFlight"):
                        if key not in metadata:
                            sys.exit(f"{name}: an aws-sqs-queue trigger without {key}")
                    if ("queueURL" in metadata) == ("queueURLFromEnv" in metadata):
                        sys.exit(f"{name}: an aws-sqs-queue trigger needs one of queueURL, queueURLFromEnv")
                    if metadata["scaleOnInFlight"] not in ("true", "false"):
                        sys.exit(f"{name}: scaleOnInFlight must be \"true\" or \"false\"")
            checked += 1
        if checked == 0:
            sys.exit(f"{path}: no KEDA objects")
        print(f"{path}: {checked} KEDA objects valid against KEDA's CRD schema")


def secret_envs(config_text):
    return set(re.findall(r'env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', config_text))


def run_checked(mpconnect, what, args, env, config_path, secrets=()):
    """Runs the binary as the container would: its args, its env (and nothing else). `secrets`
    names the env vars that came from a Secret: the stage must read every one of them."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    full = {**base, **env, "MPCONNECT_CONFIG": config_path}
    stage = [a for a in args if not a.startswith("-")]
    if not stage or stage[0] not in STAGES:
        sys.exit(f"{what}: args {args} name no stage ({sorted(STAGES)})")
    result = subprocess.run([mpconnect, *args, "--help"], capture_output=True, text=True, env=full, check=False)
    if result.returncode != 0:
        sys.exit(f"{what}: mpconnect does not take args {args}:\n{result.stderr}")
    with open(config_path, encoding="utf-8") as f:
        config_text = f.read()
    tomllib.loads(config_text)
    referenced = secret_envs(config_text)
    for name in env:
        if name.startswith("MPCONNECT__") or name in KNOWN_ENV or name in referenced:
            continue
        if name.startswith(KNOWN_PREFIXES):
            continue
        sys.exit(f"{what}: env {name} is nothing mpconnect reads")
    stage_name = stage[0]
    result = subprocess.run(
        [mpconnect, "validate", "--stage", stage_name], capture_output=True, text=True, env=full, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{what}: mpconnect validate refused its config and env:\n{result.stdout}{result.stderr}")
    read = re.search(r"^secrets read from the environment:(.*)$", result.stdout, re.M)
    if read is None:
        sys.exit(f"{what}: mpconnect validate did not say which secrets {stage_name} reads")
    reads = set(read.group(1).split())
    # AWS credentials (LocalStack's) are read by the AWS SDK in every stage that uses SQS or S3.
    given = {name for name in secrets if name not in reads and not name.startswith("AWS_")}
    if given:
        sys.exit(f"{what}: given secrets that {stage_name} never reads: {sorted(given)}")
    print(f"{what}: args {args} and {len(env)} env vars accepted; config valid; secrets {sorted(secrets) or 'none'}")


def container_env(container, docs, what, examples=()):
    """The env a container gets: envFrom ConfigMaps and Secrets, then env (values and refs)."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in examples if "metadata" in d}
    by_kind.update({(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d})
    env = {}
    secrets = set()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            found = by_kind.get(("ConfigMap", source["configMapRef"]["name"]))
            if found is None:
                sys.exit(f"{what}: envFrom a ConfigMap that is not there: {source}")
            env.update(found.get("data", {}))
        elif "secretRef" in source:
            found = by_kind.get(("Secret", source["secretRef"]["name"]))
            if found is None:
                sys.exit(f"{what}: envFrom a Secret that is not there: {source}")
            names = {**(found.get("data") or {}), **(found.get("stringData") or {})}
            env.update({k: "example" for k in names})
            secrets.update(names)
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "example"))
        if "secretKeyRef" in item.get("valueFrom", {}):
            secrets.add(item["name"])
    return env, secrets


def mounted_config(pod_spec, container, docs, what, directory):
    """Writes the ConfigMap mounted at the config path to a file; returns the path inside it."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    by_name = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "configMap" not in volume:
            continue
        config_map = by_name.get(volume["configMap"]["name"])
        if config_map is None:
            sys.exit(f"{what}: mounts a ConfigMap that is not there")
        for key, text in config_map.get("data", {}).items():
            path = os.path.join(directory, mount["mountPath"].strip("/").replace("/", "_") + "_" + key)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            yield os.path.join(mount["mountPath"], key), path


def runs(mpconnect, targets):
    examples = []
    if targets[:1] == ["--secrets"]:
        examples = load(targets[1])
        targets = targets[2:]
    for target in targets:
        with tempfile.TemporaryDirectory() as directory:
            if target.endswith((".yml", ".yaml")) and not os.path.isdir(target):
                runs_compose(mpconnect, target, directory)
            else:
                runs_kubernetes(mpconnect, target, directory, examples)


def runs_kubernetes(mpconnect, overlay, directory, examples):
    docs = render(overlay) if os.path.isdir(overlay) else load(overlay)
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if not deployments:
        sys.exit(f"{overlay}: no Deployments")
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            what = f"{overlay}: {deployment['metadata']['name']}/{container['name']}"
            env, secrets = container_env(container, docs, what, examples)
            configs = dict(mounted_config(pod, container, docs, what, directory))
            config_path = env.get("MPCONNECT_CONFIG")
            if config_path not in configs:
                sys.exit(f"{what}: MPCONNECT_CONFIG={config_path} is not a mounted config file")
            env.pop("MPCONNECT_CONFIG")
            run_checked(mpconnect, what, container.get("args", []), env, configs[config_path], secrets)


def runs_compose(mpconnect, compose_path, directory):
    with open(compose_path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    root = os.path.dirname(os.path.abspath(compose_path))
    checked = 0
    for name, service in compose.get("services", {}).items():
        if "mpconnect" not in str(service.get("image", "")):
            continue
        what = f"{compose_path}: {name}"
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env = {k: str(v) for k, v in environment.items()}
        mounts = {}
        for volume in service.get("volumes", []):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
            if source.startswith("."):
                mounts[target] = os.path.join(root, source)
        config_path = env.pop("MPCONNECT_CONFIG", None)
        if config_path not in mounts:
            sys.exit(f"{what}: MPCONNECT_CONFIG={config_path} is not a mounted file")
        command = service.get("command", [])
        if isinstance(command, str):
            command = command.split()
        run_checked(mpconnect, what, command, env, mounts[config_path])
        checked += 1
    if checked == 0:
        sys.exit(f"{compose_path}: no mpconnect services")


def images(pairs):
    for pair in pairs:
        overlay, _, expected = pair.partition("=")
        deployments = [d for d in render(overlay) if d.get("kind") == "Deployment"]
        if not deployments:
            sys.exit(f"{overlay}: no Deployments")
        for deployment in deployments:
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                if container.get("image") != expected:
                    sys.exit(
                        f"{overlay}: {deployment['metadata']['name']}/{container['name']} runs "
                        f"{container.get('image')!r}, not {expected!r}"
                    )
        print(f"{overlay}: all {len(deployments)} Deployments run {expected}")


# Paths of ingest's API; everything else it serves (/metrics, /healthz, /readyz) stays inside.
API_PATHS = {"/v2", "/events", "/bulkevents", "/webhook"}
# CoreDNS's default TTL for cluster names (its kubernetes plugin).
DNS_TTL_SECS = 5


def source_number(path, pattern):
    """A number the code defines (group 1 of `pattern` in `path`): the checks follow the code."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        found = re.search(pattern, f.read())
    if found is None:
        sys.exit(f"{pattern!r} not found in {path}")
    return int(found.group(1))


def report(what, problems, fine):
    """Exits listing `problems`, or prints what was found `fine`."""
    if problems:
        sys.exit(f"{what}:\n  " + "\n  ".join(problems))
    print(f"{what}: {fine}")


def resolve_every_secs():
    """How often the transform re-resolves delivery (stages::RESOLVE_EVERY)."""
    return source_number(
        "crates/mpconnect/src/stages.rs", r"RESOLVE_EVERY: Duration = Duration::from_secs\((\d+)\)"
    )


def drain_secs(docs):
    """shutdown.grace_period_secs of the config the overlay mounts (60 by default)."""
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "mpconnect.toml" in doc.get("data", {}):
            config = tomllib.loads(doc["data"]["mpconnect.toml"])
            return config.get("shutdown", {}).get("grace_period_secs", 60)
    return 60


def policy(overlays):
    resolve_every = resolve_every_secs()
    # The Secrets no overlay applies (the operator creates them).
    examples = load(os.path.join(ROOT, "deploy/k8s/secret.example.yaml"))
    for overlay in overlays:
        docs = render(overlay)
        by_kind = lambda kind: [d for d in docs if d.get("kind") == kind]  # noqa: E731
        deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
        problems = []
        # Autoscaled Deployments: the autoscaler owns the count.
        scaled = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind("HorizontalPodAutoscaler")}
        scaled.update({s["spec"]["scaleTargetRef"]["name"]: s for s in by_kind("ScaledObject")})
        for name in scaled:
            if name in deployments and "replicas" in deployments[name]["spec"]:
                problems.append(f"{name}: spec.replicas beside an autoscaler resets its count on every apply")
        for so in by_kind("ScaledObject"):
            target = deployments.get(so["spec"]["scaleTargetRef"]["name"])
            env = {}
            if target is not None:
                container = target["spec"]["template"]["spec"]["containers"][0]
                env, _ = container_env(container, docs, overlay, examples)
            for trigger in so["spec"].get("triggers", []):
                if trigger.get("type") != "aws-sqs-queue":
                    continue
                metadata = trigger.get("metadata", {})
                if "queueURL" in metadata:
                    problems.append(
                        f"{so['metadata']['name']}: queueURL written in the trigger; use queueURLFromEnv, "
                        "so the URL the stage reads is the one KEDA reads"
                    )
                url = metadata.get("queueURL") or env.get(metadata.get("queueURLFromEnv", ""), "")
                if "queueURLFromEnv" in metadata and metadata["queueURLFromEnv"] not in env:
                    problems.append(
                        f"{so['metadata']['name']}: queueURLFromEnv {metadata['queueURLFromEnv']} is not in "
                        "the target container's env"
                    )
                if "retry" in url or "retry" in metadata.get("queueURLFromEnv", "").lower():
                    problems.append(
                        f"{so['metadata']['name']}: scales on a retry queue: parked batches are a "
                        "destination's distress, not work more pods can do"
                    )
        if "mpconnect-delivery" in scaled and scaled["mpconnect-delivery"].get("kind") == "ScaledObject":
            for trigger in scaled["mpconnect-delivery"]["spec"].get("triggers", []):
                if trigger.get("type") == "aws-sqs-queue":
                    problems.append("mpconnect-delivery: scaled on an SQS queue, not on its live work")
        # Only the API is exposed.
        deregistration = 0
        for ingress in by_kind("Ingress"):
            for rule in ingress["spec"].get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    if path.get("path") not in API_PATHS:
                        problems.append(
                            f"Ingress {ingress['metadata']['name']}: path {path.get('path')!r} exposes more "
                            f"than the API ({sorted(API_PATHS)})"
                        )
            annotations = ingress["metadata"].get("annotations", {})
            if ingress["spec"].get("ingressClassName") == "alb":
                attributes = annotations.get("alb.ingress.kubernetes.io/target-group-attributes", "")
                found = re.search(r"deregistration_delay\.timeout_seconds=(\d+)", attributes)
                # The ALB's default deregistration delay is 300 s.
                deregistration = int(found.group(1)) if found else 300
                namespaces = {n["metadata"]["name"]: n for n in by_kind("Namespace")}
                namespace = namespaces.get(ingress["metadata"].get("namespace"), {})
                labels = namespace.get("metadata", {}).get("labels", {})
                if labels.get("elbv2.k8s.aws/pod-readiness-gate-inject") != "enabled":
                    problems.append(
                        "an ALB Ingress without the pod readiness gate (namespace label "
                        "elbv2.k8s.aws/pod-readiness-gate-inject: enabled): rollouts would drop "
                        "old pods before the ALB reaches new ones"
                    )
        # Stopping pods: keep serving while callers let go, then drain, then the kill.
        drain = drain_secs(docs)
        needs = {"mpconnect-ingest": deregistration, "mpconnect-delivery": resolve_every + DNS_TTL_SECS}
        for name, deployment in deployments.items():
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if name in needs and pre_stop <= needs[name]:
                problems.append(
                    f"{name}: preStop {pre_stop} s is not longer than the {needs[name]} s its callers "
                    "take to stop calling it"
                )
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < pre_stop + drain + 10:
                problems.append(
                    f"{name}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {drain} + 10"
                )
        # A CPU target means something only against a request near real use.
        for hpa in by_kind("HorizontalPodAutoscaler"):
            target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
            on_cpu = any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", []))
            if target is None or not on_cpu:
                continue
            request = target["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get(
                "requests", {}
            ).get("cpu", "0")
            millicores = int(request[:-1]) if str(request).endswith("m") else int(float(request) * 1000)
            if millicores < 500:
                problems.append(
                    f"{hpa['metadata']['name']}: scales on CPU against a request of {request}, far below "
                    "a stage's real use (it would scale out at a fraction of a core)"
                )
        # Traces exported in production are sampled (parent-based, decided at ingest).
        for name, deployment in deployments.items():
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            env, _ = container_env(container, docs, overlay, examples)
            exporting = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
            production = "deployment.environment=production" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
            if exporting and production and "OTEL_TRACES_SAMPLER" not in env:
                problems.append(f"{name}: exports every trace in production: set OTEL_TRACES_SAMPLER")
        # Delivery's gRPC: the transform only.
        grpc_guarded = False
        for netpol in by_kind("NetworkPolicy"):
            selector = netpol["spec"].get("podSelector", {}).get("matchLabels", {})
            if selector.get("app.kubernetes.io/component") != "delivery":
                continue
            for rule in netpol["spec"].get("ingress", []):
                ports = {p.get("port") for p in rule.get("ports", [])}
                if "grpc" in ports or 50051 in ports:
                    sources = [f.get("podSelector", {}).get("matchLabels", {}) for f in rule.get("from", [])]
                    grpc_guarded = bool(sources) and all(
                        src.get("app.kubernetes.io/component") == "transform" for src in sources
                    )
        if not grpc_guarded:
            problems.append("no NetworkPolicy lets only the transform call delivery's gRPC")
        report(overlay, problems, f"{len(deployments)} Deployments safe to roll, scale and expose")


# queues.max_receives's default (config.rs): SQS's own redrive must come after mpconnect's.
def default_max_receives():
    return source_number("crates/mpconnect/src/config.rs", r"fn default_max_receives\(\) -> u32 \{\s*(\d+)\s*\}")


RETRY_WINDOW_SECS = 4 * 3600


def queues_from_script(path):
    """Runs the init script with an awslocal that records its calls; returns name -> attributes."""
    with tempfile.TemporaryDirectory() as bin_dir:
        log = os.path.join(bin_dir, "calls.jsonl")
        fake = os.path.join(bin_dir, "awslocal")
        with open(fake, "w", encoding="utf-8") as f:
            f.write(f'#!{sys.executable}\nimport json, sys\nopen({log!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n')
        os.chmod(fake, 0o755)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "TMPDIR": bin_dir}
        # The script marks itself done in /tmp: give it a scratch root for that.
        with open(path, encoding="utf-8") as f:
            script = f.read().replace("/tmp/", bin_dir + "/")
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            sys.exit(f"{path}: the script failed:\n{result.stderr}")
        queues = {}
        with open(log, encoding="utf-8") as f:
            for line in f:
                args = json.loads(line)
                if args[:2] != ["sqs", "create-queue"]:
                    continue
                name = args[args.index("--queue-name") + 1]
                attributes = json.loads(args[args.index("--attributes") + 1]) if "--attributes" in args else {}
                queues[name] = attributes
        return queues


def queues_from_template(path):
    from cfnlint.decode import decode

    template, matches = decode(path)
    if matches:
        sys.exit(f"{path}: cannot read the template: {matches}")
    by_logical = {}
    for logical, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::SQS::Queue":
            by_logical[logical] = resource.get("Properties", {})
        # A trust policy written as a string (so its condition keys can name the issuer) is
        # checked by nobody else: it must be JSON once substituted.
        trust = resource.get("Properties", {}).get("AssumeRolePolicyDocument", {})
        if isinstance(trust, dict) and isinstance(trust.get("Fn::Sub"), str):
            try:
                json.loads(re.sub(r"\$\{[^}]+\}", "x", trust["Fn::Sub"]))
            except ValueError as e:
                sys.exit(f"{path}: {logical}'s AssumeRolePolicyDocument is not JSON: {e}")
    queues = {}
    for logical, props in by_logical.items():
        attributes = {k: v for k, v in props.items() if k != "QueueName"}
        redrive = attributes.get("RedrivePolicy")
        if isinstance(redrive, dict):
            attributes["RedrivePolicy"] = json.dumps({k: v for k, v in redrive.items()}, default=str)
        queues[props.get("QueueName", logical)] = attributes
    return queues


def queues(paths):
    max_receives = default_max_receives()
    for path in paths:
        found = queues_from_script(path) if path.endswith(".sh") else queues_from_template(path)
        problems = []
        for name, attributes in found.items():
            retention = int(attributes.get("MessageRetentionPeriod", 345600))
            redrive = attributes.get("RedrivePolicy")
            receives = int(json.loads(redrive)["maxReceiveCount"]) if redrive else None
            if "retry" in name:
                if redrive:
                    problems.append(
                        f"{name}: a RedrivePolicy on a retry queue: every retry is a receive, so SQS "
                        f"would dead-letter a parked batch after {receives} retries, long before the "
                        "retry window"
                    )
                if retention < RETRY_WINDOW_SECS * 2:
                    problems.append(f"{name}: retention {retention} s is not twice the retry window")
            elif not name.endswith("-dlq") and receives is not None and receives <= max_receives:
                problems.append(
                    f"{name}: SQS dead-letters after {receives} receives, before mpconnect's own "
                    f"{max_receives} (queues.max_receives), which records why"
                )
            if retention < 4 * 86400:
                problems.append(f"{name}: retention {retention} s is under 4 days")
        if not found:
            problems.append("no queues")
        report(path, problems, f"{len(found)} queues with settings safe for mpconnect's retries")


def exported_metrics():
    """Every metric name mpconnect's code exports, and what Prometheus adds itself."""
    names = {"up"}
    for path in glob.glob(os.path.join(ROOT, "crates/*/src/**/*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r'"(mpconnect_[a-z0-9_]+)"', f.read()))
    # Histograms are exported as these series.
    for name in list(names):
        if name.endswith(("_seconds", "_duration_seconds")):
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def metric_names(node, found):
    """The metric names a parsed PromQL expression reads."""
    name = getattr(node, "name", None)
    if type(node).__name__ in ("VectorSelector", "MatrixSelector") and name:
        found.add(name)
    for child in ("expr", "lhs", "rhs", "vector_selector", "param"):
        sub = getattr(node, child, None)
        if sub is not None and not isinstance(sub, (str, int, float)):
            metric_names(sub, found)
    for sub in getattr(node, "args", None) or []:
        metric_names(sub, found)
    return found


def runbook_anchors(path):
    with open(path, encoding="utf-8") as f:
        headings = re.findall(r"^#{2,3} (.+)$", f.read(), re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def alerts(paths):
    import promql_parser
    from cloudcoil.models.prometheus_operator import v1

    exported = exported_metrics()
    anchors = runbook_anchors(os.path.join(ROOT, "deploy/RUNBOOK.md"))
    for path in paths:
        # A component renders only inside an overlay: its files are read as they are.
        files = sorted(glob.glob(os.path.join(path, "*.yaml"))) if os.path.isdir(path) else [path]
        docs = [d for f in files for d in load(f)]
        problems = []
        kinds = set()
        for doc in docs:
            if not doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                continue
            kind = doc.get("kind", "")
            kinds.add(kind)
            model = getattr(v1, kind, None)
            name = f"{kind}/{doc.get('metadata', {}).get('name')}"
            if model is None:
                problems.append(f"{name}: not a Prometheus Operator kind")
                continue
            try:
                parsed = model.model_validate(doc)
            except Exception as e:  # noqa: BLE001 - pydantic's error is the finding
                problems.append(f"{name}: refused by the CRD schema: {e}")
                continue
            unknown = unknown_keys(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
            if unknown:
                problems.append(f"{name}: fields the CRD schema does not have: {unknown}")
            for group in doc.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    alert = rule.get("alert", rule.get("record"))
                    try:
                        tree = promql_parser.parse(rule["expr"])
                    except Exception as e:  # noqa: BLE001 - the parser's error is the finding
                        problems.append(f"{alert}: PromQL does not parse: {e}")
                        continue
                    unknown_metrics = metric_names(tree, set()) - exported
                    if unknown_metrics:
                        problems.append(f"{alert}: reads metrics mpconnect does not export: {sorted(unknown_metrics)}")
                    if "alert" in rule:
                        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
                        if labels.get("severity") not in ("warning", "critical"):
                            problems.append(f"{alert}: severity must be warning or critical")
                        if not annotations.get("summary"):
                            problems.append(f"{alert}: no summary")
                        anchor = annotations.get("runbook_url", "").partition("#")[2]
                        if anchor not in anchors:
                            problems.append(f"{alert}: runbook_url names no section of deploy/RUNBOOK.md ({anchor!r})")
        for needed in ("PrometheusRule", "ServiceMonitor"):
            if needed not in kinds:
                problems.append(f"no {needed}")
        report(path, problems, f"{sorted(kinds)} valid; every rule parses, reads exported metrics, links to the runbook")



DEBIAN_RELEASES = {"bullseye": 11, "bookworm": 12, "trixie": 13, "forky": 14}


def debian_release(image):
    """The Debian release an image's tag names (rust:1.95.0-trixie, distroless cc-debian13)."""
    found = re.search(r"-debian(\d+)\b", image)
    if found:
        return int(found.group(1))
    for codename, number in DEBIAN_RELEASES.items():
        if re.search(rf"[:-]{codename}\b", image) or re.search(rf"-{codename}-", image):
            return number
    return None


def dockerfile(path):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip().upper().startswith("FROM ")]
    stages, external = set(), []
    for line in lines:
        parts = line.split()
        image = next(p for p in parts[1:] if not p.startswith("--"))
        if image not in stages:
            external.append(image)
        if len(parts) >= 4 and parts[-2].upper() == "AS":
            stages.add(parts[-1])
    problems = []
    releases = {}
    for image in external:
        name, _, digest = image.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        if not tag or tag.startswith("latest") or re.fullmatch(r"\d+(-.*)?", tag):
            problems.append(f"{image}: not pinned to a version (a floating tag moves the glibc under the binary)")
        if "latest" in tag:
            problems.append(f"{image}: a latest tag")
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            problems.append(f"{image}: a digest that is not sha256:<64 hex>")
        release = debian_release(name)
        if release is None:
            problems.append(f"{image}: its tag names no Debian release, so its glibc is unknown")
        releases[image] = release
    if len(set(releases.values())) > 1:
        problems.append(
            "builder and runtime on different Debian releases: "
            + ", ".join(f"{i} (Debian {r})" for i, r in releases.items())
            + "; a binary linked on the newer glibc does not start on the older"
        )
    if len(external) < 2:
        problems.append("expected a builder and a runtime image")
    report(path, problems, f"{', '.join(external)}: pinned, all on Debian {next(iter(releases.values()), None)}")


# Images past their end of life.
END_OF_LIFE = {"jaegertracing/all-in-one": "Jaeger 1.x (use jaegertracing/jaeger 2.x)"}


def compose(path, init_script):
    with open(path, encoding="utf-8") as f:
        stack = yaml.safe_load(f)
    with open(init_script, encoding="utf-8") as f:
        script = f.read()
    problems = []
    for name, service in stack.get("services", {}).items():
        image = str(service.get("image", ""))
        repository, _, tag = image.rpartition(":") if ":" in image.rpartition("/")[2] else (image, "", "")
        if "build" not in service and (not tag or tag == "latest"):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
        if repository in END_OF_LIFE:
            problems.append(f"{name}: {END_OF_LIFE[repository]} is past its end of life")
        if "localstack" in repository:
            marks = re.findall(r"^touch (\S+)\s*$", script, re.M)
            last_line = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
            test = " ".join(service.get("healthcheck", {}).get("test", []))
            if not marks or marks[-1] not in test:
                problems.append(
                    f"{name}: the healthcheck does not wait for the init script's last mark "
                    "(queues, buckets and notifications would not all exist yet)"
                )
            elif not any(marks[-1] in line for line in last_line[-2:]):
                problems.append(f"{init_script}: the ready mark is not made at the end")
    report(path, problems, f"images pinned and supported; LocalStack healthy once {init_script} has finished")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, rest = argv[1], argv[2:]
    if command == "kustomize":
        kustomize(rest)
    elif command == "keda":
        keda(rest)
    elif command == "runs":
        runs(rest[0], rest[1:])
    elif command == "images":
        images(rest)
    elif command == "policy":
        policy(rest)
    elif command == "queues":
        queues(rest)
    elif command == "alerts":
        alerts(rest)
    elif command == "dockerfile":
        dockerfile(rest[0])
    elif command == "compose":
        compose(rest[0], rest[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
