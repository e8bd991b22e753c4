"""Offline checks of the deployment manifests (no cluster here).

  check-manifests.py kustomize OVERLAY...        render each overlay (kubectl kustomize) and
                                                 validate it with kubernetes-validate --strict
  check-manifests.py keda FILE...                KEDA objects against KEDA's CRD schema (the
                                                 cloudcoil models generated from it), unknown keys
                                                 refused
  check-manifests.py runs MPCONNECT [--secrets FILE] (OVERLAY|COMPOSE)...
                                                 what each container is given (args, env, the
                                                 mounted config) is what the binary accepts:
                                                 `mpconnect <args> --help` and `mpconnect validate`;
                                                 Secrets an overlay leaves to the operator are
                                                 taken from the example FILE

Each prints what it checked and exits 1 on the first file with a problem."""

import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

VENV_BIN = os.path.dirname(sys.executable)
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
        core = [d for d in docs if not d.get("apiVersion", "").startswith("keda.sh/")]
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
                    for key in ("queueURL", "queueLength", "awsRegion", "scaleOnInFlight"):
                        if key not in metadata:
                            sys.exit(f"{name}: an aws-sqs-queue trigger without {key}")
                    if metadata["scaleOnInFlight"] not in ("true", "false"):
                        sys.exit(f"{name}: scaleOnInFlight must be \"true\" or \"false\"")
            checked += 1
        if checked == 0:
            sys.exit(f"{path}: no KEDA objects")
        print(f"{path}: {checked} KEDA objects valid against KEDA's CRD schema")


def secret_envs(config_text):
    return set(re.findall(r'env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', config_text))


def run_checked(mpconnect, what, args, env, config_path):
    """Runs the binary as the container would: its args, its env (and nothing else)."""
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
    result = subprocess.run([mpconnect, "validate"], capture_output=True, text=True, env=full, check=False)
    if result.returncode != 0:
        sys.exit(f"{what}: mpconnect validate refused its config and env:\n{result.stdout}{result.stderr}")
    print(f"{what}: args {args} and {len(env)} env vars accepted; config valid")


def container_env(container, docs, what, examples=()):
    """The env a container gets: envFrom ConfigMaps and Secrets, then env (values and refs)."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in examples if "metadata" in d}
    by_kind.update({(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d})
    env = {}
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
            env.update({k: "example" for k in {**found.get("data", {}), **found.get("stringData", {})}})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "example"))
    return env


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
            env = container_env(container, docs, what, examples)
            configs = dict(mounted_config(pod, container, docs, what, directory))
            config_path = env.get("MPCONNECT_CONFIG")
            if config_path not in configs:
                sys.exit(f"{what}: MPCONNECT_CONFIG={config_path} is not a mounted config file")
            env.pop("MPCONNECT_CONFIG")
            run_checked(mpconnect, what, container.get("args", []), env, configs[config_path])


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
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
