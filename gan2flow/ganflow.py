"""``GANFlow``: a generator with its calibrated discriminators — sample, refine, reweight; a ``.keras`` file.

    flow = gan2flow.convert(generator, discriminator, real_data)    # gan2flow.conversion
    x = flow.sample(1000, seed=0)                                   # refined in data space
    z = flow.refine_latent(flow.latents(1000, seed=0))              # or in latent space
    flow.save("my_flow.keras");  flow = gan2flow.load("my_flow.keras")

Refinement builds flow plans (``gan2flow.flows``) and executes them on one device or, with
``strategy=``, on the replicas of a ``tf.distribute`` strategy (``gan2flow.distribute``).
"""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, adapters, distribute, estimators, flows, metrics, models
from gan2flow import sigmas as schedules

__all__ = ["GANFlow", "load"]

_MAX_LATENT_STEP = 0.5
_PROBE_ROWS = 16  # rows flows.make_plan probes a field on (the labels of at least these are bound first)


@keras.saving.register_keras_serializable(package="gan2flow")
class GANFlow(keras.Model):
    """A generator with calibrated discriminators: sample, refine, reweight; saveable as ``.keras``.

    Args:
        generator: Keras model z -> x, z ~ N(0, I) of shape ``latent_shape``.
        discriminator: calibrated σ-conditioned Keras model [x, sigma] -> logit (logistic loss:
            logit = log p_σ/q_σ at the optimum, q the generator's distribution). Latent refinement,
            :meth:`log_ratio`, :meth:`importance_weights` and ``field="calibrated"`` use it.
        sigma_range: (sigma_min, sigma_max) the discriminator was calibrated on.
        latent_shape: the generator's input shape (without batch).
        diagnostics: the calibration report (JSON-able dict), kept in the saved file.
        stages: the staged refinement (shared/SD_FLOW.md §9.2), a JSON-able dict: ``sigmas`` and ``step_sizes``
            of the trusted stages, ``flow_steps`` per stage, ``box`` (low, high) per coordinate,
            ``max_displacement`` (the data's diameter, the Tweedie bound) and the stages' noise, ``noise_scale``
            with per-stage factors ``noise_levels`` (both optional: absent, no noise); or None.
        stage_discriminator: the stages' shared σ-conditioned architecture (a Keras model).
        stage_weights: its trainable weights per stage, one array per trainable variable shaped
            ``[K, *variable.shape]`` (:meth:`gan2flow.estimators.StagedScoreDifference.stack`); stage k's
            discriminator was calibrated against the generator's samples *as they are at stage k* of the
            flow (``gan2flow.staged``). Kept as non-trainable weights of this model (saved with it).
        n_classes: K for a class-conditional flow: the generator takes ``[z, label]``, the discriminator and the
            stages' architecture ``[x, sigma, label]``; every method that draws, refines or weighs samples then
            takes ``labels=`` (an int for one class, or one integer per row) and the fields are v_σ(x | y).
            None: unconditional.
    """

    def __init__(self, generator, discriminator, *, sigma_range, latent_shape, diagnostics=None, stages=None,
                 stage_discriminator=None, stage_weights=None, n_classes=None, name="gan_flow", **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.diagnostics = diagnostics or {}
        self.n_classes = None if n_classes is None else _checks.positive_int(n_classes, "n_classes")
        # A conditional flow's fields read each row's label from here (bound per chunk by _run).
        self.row_labels = None if self.n_classes is None else estimators.RowLabels(self.n_classes)
        self.estimator = estimators.DiscriminatorScoreDifference(self._labelled(discriminator), loss="logistic",
                                                                 sigma_conditioned=True)
        self._latent_estimators = {}
        self.stages = dict(stages) if stages else None
        self.stage_discriminator = stage_discriminator if self.stages else None
        self.staged_estimator = None
        if self.stages and self.stages.get("sigmas"):
            if stage_discriminator is None:
                raise ValueError("`stage_discriminator` must be the stages' Keras model when `stages` are given.")
            self.stage_weights = models.StackedWeights(
                [variable.shape for variable in stage_discriminator.trainable_variables], len(self.stages["sigmas"]),
                name="stage_weights")
            if stage_weights is not None:  # (from_config: zeros now, the saved values when Keras loads them)
                for variable, value in zip(self.stage_weights.stacked, stage_weights, strict=True):
                    variable.assign(np.asarray(value, np.float32))
            self.staged_estimator = estimators.StagedScoreDifference(stage_discriminator, self.stage_weights.stacked,
                                                                     self.stages["sigmas"], labels=self.row_labels)
        self.built = True

    # keras plumbing ----------------------------------------------------------------------------
    def call(self, z, training=False):
        """``generator(z)``."""
        return self.generator(z, training=False)

    def get_config(self):
        return {
            "name": self.name,
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "sigma_range": list(self.sigma_range),
            "latent_shape": list(self.latent_shape),
            "diagnostics": self.diagnostics,
            "stages": self.stages,
            "stage_discriminator": (None if self.stage_discriminator is None
                                    else keras.saving.serialize_keras_object(self.stage_discriminator)),
        } | ({} if self.n_classes is None else {"n_classes": self.n_classes})

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
        if config.get("stage_discriminator") is not None:
            config["stage_discriminator"] = keras.saving.deserialize_keras_object(config["stage_discriminator"])
        return cls(**config)

    def save(self, filepath, overwrite=True, **kwargs):
        """``keras.Model.save``; to a local ``.keras`` path atomically (a temporary file in the same folder,
        then ``os.replace``), so that an interrupted save never leaves a half-written file behind."""
        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else None
        if path is None or not path.endswith(".keras") or "://" in path or (not overwrite and os.path.exists(path)):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        from gan2flow import _io

        def write(temporary):
            super(GANFlow, self).save(temporary, overwrite=True, **kwargs)

        _io.atomic_write(path, write, ".keras")

    @property
    def sample_shape(self):
        return tuple(self.generator.output_shape[1:])

    # class labels (conditional flows) ------------------------------------------------------------
    def _labelled(self, model):
        """``model`` with the rows' labels bound (conditional flows), else ``model`` itself."""
        return model if self.row_labels is None else estimators.LabelledModel(model, self.row_labels)

    def check_labels(self, labels, n, name="labels"):
        """``labels`` for n rows as int32 [n] (an int: every row that class); None for an unconditional flow.

        Raises:
            ValueError: labels for an unconditional flow, none for a conditional one (saying how to pass them),
                or labels that are not n integer classes in 0 … n_classes − 1.
        """
        if self.n_classes is None:
            if labels is not None:
                raise ValueError(f"`{name}` applies to class-conditional flows only; this flow's generator takes z "
                                 "alone (convert a generator [z, label] with convert(..., labels=y)).")
            return None
        if labels is None:
            raise ValueError(f"`{name}` must be given: this flow is class-conditional (its generator takes [z, label], "
                             f"{self.n_classes} classes). Pass {name}=K for one class 0 … {self.n_classes - 1}, or an "
                             f"array of one integer class per sample (CLI: --label K or --labels LABELS.npy).")
        return adapters.check_labels(labels, n, name, self.n_classes)

    def _run(self, plan, x, labels, *, phases=None, batch_size=None, callback=None, progress=None, record=False):
        """``flows.run`` with a conditional flow's labels bound chunk by chunk.

        The chunks are those of ``flows.run`` (``batch_size`` rows, noise keyed by the global row), and each
        chunk's labels are bound just before it runs: the fields read the labels of the rows they are given,
        so a chunked run equals one pass. With ``phases`` (the drift correction, whose kernel term couples the
        rows of a chunk) the rows are first grouped by class (stable order), so that a sample's correction
        compares only samples of its own class: ∇log q₀,σ(x | y) − ∇log q_t,σ(x | y); noise is then keyed by
        the row's position in that grouped order."""
        if labels is None:
            return flows.run(plan, x, phases=phases, batch_size=batch_size, callback=callback, progress=progress,
                             record=record)
        n = int(x.shape[0])
        chunk = n if batch_size is None else min(_checks.positive_int(batch_size, "batch_size"), max(n, 1))
        order = np.arange(n) if phases is None else np.argsort(labels, kind="stable")
        groups = [order] if phases is None else [order[labels[order] == k] for k in np.unique(labels)]
        pieces, results, position = [], [], 0
        for group in groups:
            for start in range(0, len(group), chunk):
                rows = group[start:start + chunk]
                self.row_labels.assign(labels[rows])
                results.append(flows.run(plan.rows(position), tf.gather(x, rows), phases=phases, callback=callback,
                                         progress=progress, record=record))
                pieces.append(rows)
                position += len(rows)
        if not results:
            return flows.run(plan, x, phases=phases, record=record)
        inverse = np.argsort(np.concatenate(pieces), kind="stable")
        moved = tf.gather(tf.concat([r.x for r in results], axis=0), inverse)
        history = None if not record else tf.gather(tf.concat([r.history for r in results], axis=1), inverse, axis=1)
        return flows.FlowResult(moved, history, sum(r.clipped for r in results), sum(r.projected for r in results))

    # sampling ----------------------------------------------------------------------------------
    def latents(self, n, seed=None):
        """z ~ N(0, I), [n, *latent_shape]; reproducible for an integer seed (stateless Philox)."""
        n = _checks.positive_int(n, "n")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        seed = _checks.positive_int(seed, "seed", allow_zero=True)
        return tf.random.stateless_normal((n,) + self.latent_shape, seed=[seed, 0], alg="philox")

    def generate(self, z, batch_size=4096, *, labels=None):
        """G(z) in batches, float32; G(z, y) for a conditional flow (``labels``: an int or one class per row)."""
        z = _checks.as_float_tensor(z, "z", min_rank=2)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"`z` must have shape [batch, {', '.join(map(str, self.latent_shape))}], "
                             f"got {tuple(z.shape)}.")
        labels = self.check_labels(labels, int(z.shape[0]))

        def call(rows):
            if labels is None:
                return self.generator(z[rows], training=False)
            label = adapters.label_input(self.generator, labels[rows], self.n_classes)
            return self.generator([z[rows], label], training=False)

        parts = [tf.cast(call(slice(i, i + batch_size)), tf.float32) for i in range(0, int(z.shape[0]), batch_size)]
        return tf.concat(parts, axis=0)

    def sample(self, n, *, refine=True, space="data", seed=None, method=None, labels=None, **options):
        """Draw n samples: G(z), then refined in data space (``refine``) or latent space (``refine_latent``).

        Args:
            n: number of samples.
            refine: False gives the raw generator samples.
            space: ``"data"`` or ``"latent"``.
            seed: integer seed for z and any noise: the same seed gives the same samples.
            method: None (this method's own refinement), or a refiner from ``gan2flow.refiners.names()``
                (``"drs"``, ``"mh_gan"``, ``"dot"``, ``"ddls"``, ``"dgflow"``, ``"gan2flow"``, ...) that draws
                the n samples instead, with ``options`` (docs/refiners.md).
            labels: a conditional flow's classes: an int (all n samples of that class) or n integer classes;
                the latents are the same for the same seed whatever the labels. Required for conditional flows.
            **options: passed to :meth:`refine` or :meth:`refine_latent` (``strategy=`` shards the refinement),
                or to the refiner ``method``.

        Returns:
            float32 tensor [n, *sample_shape].
        """
        labels = self.check_labels(labels, _checks.positive_int(n, "n"))
        if method is not None:
            if labels is not None:
                raise ValueError("`method`: the refiners of gan2flow.refiners take no labels; refine a conditional "
                                 "flow with method=None (its own staged or calibrated field).")
            from gan2flow import refiners  # built on this class's methods; never imports this module (no cycle)

            return tf.convert_to_tensor(refiners.get(method)(self, n, seed=seed, **options))
        _checks.one_of(space, "space", ("data", "latent"))
        z = self.latents(n, seed)
        if refine and space == "latent":
            z = self.refine_latent(z, seed=seed, labels=labels, **options)
        x = self.generate(z, labels=labels)
        if refine and space == "data":
            x = self.refine(x, seed=seed, labels=labels, **options)
        return x

    def default_sigmas(self, levels=40):
        """The refinement schedule: geometric over the calibrated σ range."""
        return schedules.geometric(self.sigma_range[1], self.sigma_range[0], levels)

    def refine(self, x, *, field="auto", sigmas=None, levels=None, steps_per_sigma=None, step_scale=None,
               drift_correction=None, drift_min_sigma=None, kernel_block_size=None, method="euler", noise_scale=None,
               seed=None, batch_size=None, verbose=False, callback=None, on_divergence="raise", strategy=None,
               check=True, report=None, labels=None):
        """Refine samples in data space along a calibrated score difference.

        Two fields (``field``; ``"auto"``: ``"staged"`` when the flow has stages, else ``"calibrated"``):

        - ``"staged"`` (the default of :func:`gan2flow.convert`, shared/SD_FLOW.md §9.2): through the trusted
          stages k = 1 … K, ``flow_steps`` times each, x ← Π_box(x + η_k v_k(x)), v_k = ∇ₓT_k(x, σ_k) from stage k's
          discriminator, calibrated against the generator's samples as they are at stage k, so v_k is the SD
          of the current particles; each sample's step obeys the Tweedie bound σ²‖v‖ ≤ the data's diameter and
          is projected onto the data's per-coordinate range. No schedule options: the stages fix the σ's.
        - ``"calibrated"``: along the discriminator calibrated against the generator, over a geometric schedule
          of ``levels`` (40) levels in the calibrated range, ``steps_per_sigma`` (2) steps of ``step_scale``
          (0.5); with ``drift_correction`` (True) the kernel term ∇log q₀,σ − ∇log q_t,σ keeps the source
          current (§7) for σ ≥ ``drift_min_sigma`` (default: twice the starting samples' median
          nearest-neighbour distance, below which a kernel pulls particles onto single samples, §8).

        With ``check`` (default), the outcome is judged by the generator-calibrated log-ratio: the mean of
        log p_σ/q_σ over the samples must not fall (σ: the smallest level that calibration trusts, and not
        below the refinement's last σ). If it falls, the refinement made things worse by the toolkit's own
        measure: a warning says so and the *unrefined* samples are returned (the documented fall-back).

        Args:
            x: samples [n, *sample_shape] (e.g. ``generate(z)``).
            field: ``"auto"``, ``"staged"`` or ``"calibrated"``.
            sigmas, levels, steps_per_sigma, step_scale, drift_correction, drift_min_sigma, kernel_block_size:
                the ``"calibrated"`` field's schedule (an error with ``"staged"``).
            method, seed, batch_size, callback, on_divergence: as :func:`gan2flow.flow`.
            noise_scale: Langevin noise √(2η)·s·n per step, as :func:`gan2flow.flow`. None (default): the field's
                own — for the staged field the noise its stages were calibrated with, ``stages["noise_scale"]``
                times each stage's ``stages["noise_levels"]`` factor (0 for the noise-free finishing stages;
                docs/convert.md, "Noise in the stages"), 0 for the calibrated field. A number: that s at every
                level (0: deterministic, which the stages were not calibrated for).
            verbose: show a progress bar.
            strategy: a ``tf.distribute`` strategy: chunks of ``batch_size`` (default n / replicas) are
                refined in parallel on its replicas (:func:`gan2flow.distribute.run`); the result equals
                this method's on one device with the same ``batch_size``. No ``callback`` then.
            check: judge the outcome and fall back to x if it is worse (see above).
            report: optional dict, filled with what happened: ``field``, ``clipped`` (velocity evaluations cut
                to the Tweedie bound), ``projected`` (coordinates projected onto the data's range),
                ``log_ratio_before``/``log_ratio_after``/``check_sigma`` and ``fell_back``.
            labels: a conditional flow's classes of the rows of x (an int: all rows that class); each sample moves
                along its own class's field v_σ(x | y). Required for conditional flows (not with ``strategy``).

        Returns:
            float32 tensor shaped like x.

        Raises:
            ValueError: bad arguments, e.g. schedule options with ``field="staged"``.
            FlowDivergenceError: non-finite values (with the step and σ).
        """
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"`x` must have shape [batch, {', '.join(map(str, self.sample_shape))}], "
                             f"got {tuple(x.shape)}.")
        field = _checks.one_of(field, "field", ("auto", "staged", "calibrated"))
        labels = self.check_labels(labels, int(x.shape[0]))
        if labels is not None:
            if strategy is not None:
                raise ValueError("`strategy` is not supported with `labels` (the replicas would share the bound "
                                 "labels); refine a conditional flow on one device.")
            self.row_labels.assign(labels[:_PROBE_ROWS])  # the plan probes its field on the first rows
        if field == "auto":
            field = "staged" if self.stages is not None else "calibrated"
        schedule = dict(sigmas=sigmas, levels=levels, steps_per_sigma=steps_per_sigma, step_scale=step_scale,
                        drift_correction=drift_correction, drift_min_sigma=drift_min_sigma,
                        kernel_block_size=kernel_block_size)
        if field == "staged":
            if self.stages is None:
                raise ValueError("`field`='staged' needs a flow converted with stages (gan2flow.convert(..., "
                                 "stages=True)); this one has none: use field='calibrated'.")
            given = [name for name, value in schedule.items() if value is not None]
            if given:
                raise ValueError(f"`{given[0]}` applies to field='calibrated' (the flow along the discriminator "
                                 "calibrated against the generator); the staged field flows through the σ's of its "
                                 "stages. Pass field='calibrated' to choose a schedule.")
            plan = self._staged_plan(x, method, noise_scale, seed, on_divergence)
            phases = None
        else:
            plan, phases = self._calibrated_plan(x, method, noise_scale or 0.0, seed, on_divergence, **schedule)
        if strategy is not None:  # data-parallel over the strategy's replicas (docs/distributed.md)
            if callback is not None:
                raise ValueError("`callback` is not supported under a strategy; refine on one device to trace steps.")
            result = distribute.run(plan, x, strategy=strategy, phases=phases, batch_size=batch_size,
                                    verbose=verbose)
        else:
            result = self._run(plan, x, labels, phases=phases, batch_size=batch_size, callback=callback,
                               progress="refining in data space" if verbose else None)
        outcome = {"field": field, "clipped": result.clipped, "projected": result.projected, "fell_back": False}
        refined = result.x
        if check and int(x.shape[0]) > 1:
            refined = self._checked(x, refined, float(np.min(plan.sigmas)) if plan.n_levels else None, outcome,
                                    labels=labels)
        if report is not None:
            report.update(outcome)
        return refined

    def trajectory(self, x, *, seed=None, labels=None):
        """The staged refinement of x recorded after every stage: (states [stages + 1, n, ...], the stages' σ's).

        The same flow as ``refine(x, field="staged", check=False, seed=seed)`` (its last state equals that
        result; the stages' noise is drawn from ``seed``, a random one when None).

        Raises:
            ValueError: a flow converted without stages.
        """
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        if self.stages is None:
            raise ValueError("`trajectory` follows the staged field; this flow was converted without stages.")
        labels = self.check_labels(labels, int(x.shape[0]))
        if labels is not None:
            self.row_labels.assign(labels[:_PROBE_ROWS])
        plan = self._staged_plan(x, "euler", None, seed, "raise")
        return self._run(plan, x, labels, record=True).history, np.asarray(plan.sigmas)

    def _staged_plan(self, x, method, noise_scale, seed, on_divergence):
        """The trusted stages as one plan (none trusted: an empty plan, the identity)."""
        stages = self.stages
        if self.staged_estimator is None:
            return flows.make_plan(x, self.estimator, [], seed=seed)
        low, high = (np.asarray(bound, np.float32) for bound in stages["box"])
        return flows.make_plan(x, self.staged_estimator, stages["sigmas"], step_sizes=stages["step_sizes"],
                               steps_per_sigma=stages["flow_steps"], method=method,
                               noise_scale=stages.get("noise_scale", 0.0) if noise_scale is None else noise_scale,
                               noise_levels=stages.get("noise_levels") if noise_scale is None else None,
                               seed=seed, on_divergence=on_divergence, box=(low, high),
                               max_displacement=stages["max_displacement"])

    def _calibrated_plan(self, x, method, noise_scale, seed, on_divergence, *, sigmas, levels, steps_per_sigma,
                         step_scale, drift_correction, drift_min_sigma, kernel_block_size):
        if sigmas is None:  # (a given schedule is validated once, by make_plan)
            sigmas = self.default_sigmas(40 if levels is None else levels)
        if drift_min_sigma is not None:
            drift_min_sigma = _checks.positive_float(drift_min_sigma, "drift_min_sigma", allow_zero=True)
        plan = flows.make_plan(x, self.estimator, sigmas, step_scale=0.5 if step_scale is None else step_scale,
                               steps_per_sigma=2 if steps_per_sigma is None else steps_per_sigma, method=method,
                               noise_scale=noise_scale, seed=seed, on_divergence=on_divergence,
                               kernel_block_size=1024 if kernel_block_size is None else kernel_block_size)
        if drift_correction is False:
            return plan, None

        def phases(chunk_plan, part):
            """Drift-corrected levels σ ≥ the threshold (the chunk's starting samples as q₀), then plain ones."""
            threshold = (2.0 * metrics.median_neighbour_distance(part.numpy()) if drift_min_sigma is None
                         else drift_min_sigma)
            corrected = int(np.sum(chunk_plan.sigmas >= threshold))
            return [chunk_plan.levels(0, corrected).replace(drift_correction=True), chunk_plan.levels(corrected)]

        return plan, phases

    def check_sigma(self, smallest=None):
        """The σ at which :meth:`refine` judges an outcome: the smallest σ whose calibration the diagnostics
        trust (held-out loss within 0.05 of training loss), and not below ``smallest``."""
        levels = (self.diagnostics or {}).get("levels") or []
        trusted = [row["sigma"] for row in levels if row.get("overfit_gap", 1.0) <= 0.05]
        sigma = min(trusted) if trusted else self.sigma_range[1]
        return max(sigma, smallest or 0.0)

    def _checked(self, before, after, smallest, outcome, max_points=2000, labels=None):
        """Fall back to ``before`` (with a warning) when the mean calibrated log-ratio fell."""
        sigma = self.check_sigma(smallest)
        rows = slice(0, min(int(before.shape[0]), max_points))
        if labels is not None:
            self.row_labels.assign(labels[rows])
        log_before = float(tf.reduce_mean(self.estimator.log_ratio(before[rows], sigma)))
        log_after = float(tf.reduce_mean(self.estimator.log_ratio(after[rows], sigma)))
        outcome.update(log_ratio_before=log_before, log_ratio_after=log_after, check_sigma=sigma)
        if log_after < log_before:
            import warnings

            warnings.warn(
                f"refinement made the samples worse by the calibrated log-ratio at sigma={sigma:.3g} (mean "
                f"{log_before:.3f} before, {log_after:.3f} after): returning the unrefined samples. Pass check=False "
                "to keep the refined ones, or field='calibrated' / 'staged' to try the other field.", stacklevel=3)
            outcome["fell_back"] = True
            return before
        return after

    def jacobian_scale(self, n=256, seed=0):
        """RMS stretch of the generator, sqrt(E‖J_G(z) u‖²) for z ~ p₀ and random unit u (data units per
        latent unit): converts data-space step sizes into latent ones. Cached after the first call."""
        if getattr(self, "_jacobian_scale", None) is None:
            z = self.latents(n, seed=seed)
            directions = tf.random.stateless_normal(tf.shape(z), seed=[seed, 1])
            directions = directions / tf.norm(tf.reshape(directions, [n, -1]), axis=1)[:, None]
            if self.row_labels is not None:  # conditional: every class in turn
                self.row_labels.assign(np.arange(n) % self.n_classes)
            with tf.autodiff.ForwardAccumulator(z, directions) as accumulator:
                x = tf.cast(self._labelled(self.generator)(z, training=False), tf.float32)
            jvp = tf.reshape(accumulator.jvp(x), [n, -1])
            self._jacobian_scale = float(tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(jvp), axis=1))))
        return self._jacobian_scale

    def refine_latent(self, z, *, sigmas=None, levels=40, steps_per_sigma=2, step_scale=0.2, noise_scale=1.0,
                      prior_weight=1.0, seed=None, batch_size=None, verbose=False, callback=None,
                      on_divergence="raise", strategy=None, labels=None):
        """Refine latents: z ← z + η_k ∇_z[link(T(G(z), σ_k)) + log p₀(z)] + sqrt(2η_k)·noise_scale·n.

        Annealed over the same σ schedule as :meth:`refine`, with η_k = step_scale·σ_k² / s² where s is
        :meth:`jacobian_scale`, so that a latent step moves G(z) about as far as a data-space step would.
        η_k is capped at 0.5 (stability of the prior term). With noise_scale = 1 this is annealed Langevin
        dynamics whose stationary law at level σ is
        p₀(z)·p_σ(G(z))/q_σ(G(z)): the prior reweighted by the density ratio, which needs no drift
        correction; with noise_scale = 0 it is mode-seeking ascent. Outputs stay on G's range.

        Args:
            z: latents [n, *latent_shape].
            sigmas, levels, steps_per_sigma, step_scale, noise_scale, seed, batch_size, callback,
            on_divergence: as :meth:`refine` / :func:`gan2flow.flow`.
            prior_weight: weight of log p₀(z) = −‖z‖²/2.
            verbose: show a progress bar.
            strategy: a ``tf.distribute`` strategy to shard the latents over (:func:`gan2flow.distribute.flow`;
                the same latents as on one device (with ``verbose=False`` when ``on_divergence="backoff"``);
                no ``callback`` or progress bar then).
            labels: a conditional flow's classes of the rows of z (an int: all rows that class): the label
                stays fixed while z moves along ∇_z[log r_σ(G(z, y) | y) + log p₀(z)]. Required for conditional
                flows (not with ``strategy``).

        Returns:
            The refined latents (pass them to :meth:`generate`, with the same labels).
        """
        z = _checks.as_float_tensor(z, "z", min_rank=2)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"`z` must have shape [batch, {', '.join(map(str, self.latent_shape))}], "
                             f"got {tuple(z.shape)}.")
        sigmas = self.default_sigmas(levels) if sigmas is None else schedules.validate(sigmas)
        step_scale = _checks.positive_float(step_scale, "step_scale")
        prior_weight = _checks.positive_float(prior_weight, "prior_weight", allow_zero=True)
        labels = self.check_labels(labels, int(z.shape[0]))
        if labels is not None and strategy is not None:
            raise ValueError("`strategy` is not supported with `labels` (the replicas would share the bound labels); "
                             "refine a conditional flow on one device.")
        if prior_weight not in self._latent_estimators:
            self._latent_estimators[prior_weight] = estimators.ReweightedPriorScore(
                self._labelled(self.generator), self.estimator, prior_weight)
        estimator = self._latent_estimators[prior_weight]
        # Capped at 0.5: beyond η = 2 the prior term alone (z ← (1 − η) z) is unstable, and unadjusted Langevin
        # is biased well before that; a generator that barely stretches its latent would otherwise get huge steps.
        step_sizes = tf.minimum(step_scale * tf.square(sigmas) / self.jacobian_scale() ** 2, _MAX_LATENT_STEP)
        if labels is not None:
            self.row_labels.assign(labels[:_PROBE_ROWS])  # the plan probes its field on the first rows
        plan = flows.make_plan(z, estimator, sigmas, step_sizes=step_sizes, steps_per_sigma=steps_per_sigma,
                               noise_scale=noise_scale, seed=seed, on_divergence=on_divergence)
        if strategy is not None:  # data-parallel over the strategy's replicas (docs/distributed.md)
            if callback is not None:
                raise ValueError("`callback` is not supported under a strategy (it would stop every replica at every "
                                 "step); use gan2flow.flow on one device to trace a flow step by step.")
            return distribute.run(plan, z, strategy=strategy, batch_size=batch_size).x
        return self._run(plan, z, labels, batch_size=batch_size, callback=callback,
                         progress="refining in latent space" if verbose else None).x

    # density ratio -----------------------------------------------------------------------------
    def log_ratio(self, x, sigma=None, *, labels=None):
        """Estimated log p_σ(x)/q_σ(x) (the calibrated logit), [batch]; σ defaults to the smallest. Conditional
        flows: log p_σ(x | y)/q_σ(x | y) for the rows' ``labels`` (an int or one class per row; required)."""
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        sigma = self.sigma_range[0] if sigma is None else _checks.positive_float(sigma, "sigma")
        labels = self.check_labels(labels, int(x.shape[0]))
        if labels is not None:
            self.row_labels.assign(labels)
        return self.estimator.log_ratio(x, sigma)

    def importance_weights(self, x, sigma=None, normalize=True, *, labels=None):
        """Density-ratio weights r(x) = exp(log_ratio(x)) for generator samples x (reweighting, rejection).

        With ``normalize`` they are divided by their mean (self-normalised importance weights, mean 1). Conditional
        flows: r(x | y) = p(x | y)/q(x | y) for the rows' ``labels`` (required), normalised within each class
        (mean 1 over the samples of each class).
        """
        log_r = self.log_ratio(x, sigma, labels=labels)
        if not normalize:
            return tf.exp(log_r)
        labels = self.check_labels(labels, int(x.shape[0]))
        if labels is None:
            return tf.exp(log_r - tf.reduce_logsumexp(log_r) + tf.math.log(tf.cast(tf.size(log_r), tf.float32)))
        groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
        weights = np.zeros(int(x.shape[0]), np.float32)
        for rows in groups:
            part = tf.gather(log_r, rows)
            weights[rows] = tf.exp(part - tf.reduce_logsumexp(part) + tf.math.log(float(len(rows)))).numpy()
        return tf.constant(weights)


def load(path):
    """Load a :class:`GANFlow` saved with ``flow.save(path)`` (a ``.keras`` file).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ``.keras`` file, or a file holding another kind of model.
    """
    model = adapters.load_model(path, "path")
    if not isinstance(model, GANFlow):
        raise ValueError(f"`path`: {os.fspath(path)!r} holds a {type(model).__name__}, not a gan2flow GANFlow "
                         "(save one with GANFlow.save or `gan2flow convert`).")
    return model
