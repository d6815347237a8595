"""The calibration report: is a calibrated discriminator's log-ratio good enough to flow along?

``diagnose(flow, real_train, real_heldout)`` measures, per σ, what a logistic log-ratio estimate must
satisfy (shared/SD_FLOW.md §8, §9.3): held-out loss close to the training loss (no overfitting),
self-consistency of the ratio (E_q[p/q] = 1) where it can be checked by sampling, plug-in KL
estimates; ``format_diagnostics`` prints it as a Markdown table with warnings.
"""
from __future__ import annotations

import math

import numpy as np

from gan2flow import losses

__all__ = ["diagnose", "format_diagnostics", "effective_sample_fraction"]

_LOGISTIC = losses.get("logistic")


def effective_sample_fraction(log_weights):
    """(Σw)² / (n Σw²) for w = exp(log_weights): 1 for equal weights, 1/n for one dominant weight."""
    log_weights = np.asarray(log_weights, np.float64)
    shifted = np.exp(log_weights - log_weights.max())
    return float(shifted.sum() ** 2 / (len(shifted) * (shifted**2).sum()))


def _logistic_terms(logits_real, logits_fake):
    real_terms, fake_terms = _LOGISTIC.per_sample_discriminator_loss(logits_real, logits_fake)
    return real_terms.numpy(), fake_terms.numpy()


def diagnose(flow, real_train, real_heldout, *, n=2000, levels=5, seed=0, train_labels=None, heldout_labels=None,
             min_class_samples=50):
    """Calibration report: per σ, held-out vs training loss and accuracy, divergence and ratio checks.

    For each σ, with noised real samples y + σn (held-out and training) and noised fresh generator
    samples G(z) + σn', and l = the calibrated logit:

    - ``heldout_loss``, ``train_loss``: logistic loss (chance: 2 log 2 ≈ 1.386); ``overfit_gap`` = held-out
      − train (a large gap means the log-ratio is sharp and wrong, §8).
    - ``accuracy`` on held-out real vs fake.
    - ``kl_q_p`` = E_q[−l] and ``kl_p_q`` = E_p[l]: plug-in estimates of KL(q_σ‖p_σ), KL(p_σ‖q_σ).
    - ``log_mean_ratio_q`` = log E_q[e^l] and ``log_mean_inverse_ratio_p`` = log E_p[e^−l]: both are 0 for an
      exact log-ratio (E_q[p/q] = 1); far from 0 means the logit is mis-calibrated at that σ. Both are
      Monte Carlo means of heavy-tailed weights: they are only checked (warned about) where the weights'
      effective sample fraction ``ratio_ess_q`` = (Σw)²/(nΣw²) is ≥ 0.1; at small σ, where p_σ and q_σ
      barely overlap, the check is not possible by sampling and E_p[1/r] reads low even when exact.

    A class-conditional flow (``train_labels``, ``heldout_labels``: the integer classes of the real samples)
    is measured on the class-conditional log-ratio log p_σ(x | y)/q_σ(x | y), each fake drawn with its real
    partner's class, and the report gains ``classes``: per class its training and held-out counts and, per σ,
    held-out and training loss; a class is not ``trusted`` when it has fewer than ``min_class_samples``
    training samples or its held-out loss exceeds its training loss by more than max(0.1, 3 standard errors)
    at some σ (too little data: its log-ratio is sharp and wrong there, §8). Untrusted classes are named in
    the warnings.
    """
    rng = np.random.default_rng(seed)
    sigmas = np.geomspace(flow.sigma_range[1], flow.sigma_range[0], levels)
    heldout_rows = rng.choice(len(real_heldout), min(n, len(real_heldout)), replace=False)
    train_rows = rng.choice(len(real_train), min(n, len(real_train)), replace=False)
    heldout, train = real_heldout[heldout_rows], real_train[train_rows]
    conditional = train_labels is not None
    y_heldout = None if not conditional else np.asarray(heldout_labels)[heldout_rows]
    y_train = None if not conditional else np.asarray(train_labels)[train_rows]
    # (labels only for conditional flows: an unconditional one is called exactly as before)
    fake = flow.generate(flow.latents(len(heldout), seed=seed + 7919),
                         **({} if not conditional else {"labels": y_heldout})).numpy()
    fake_for_train = flow.generate(flow.latents(len(train), seed=seed + 7920),
                                   **({} if not conditional else {"labels": y_train})).numpy()
    rows, class_terms = [], []
    for sigma in sigmas:
        def noised(a, k, sigma=sigma):
            return (a + sigma * np.random.default_rng([seed, k]).normal(size=a.shape)).astype(np.float32)

        labelled = {} if not conditional else {"labels": y_heldout}
        l_real = flow.log_ratio(noised(heldout, 1), sigma, **labelled).numpy()
        l_fake = flow.log_ratio(noised(fake, 2), sigma, **labelled).numpy()
        labelled = {} if not conditional else {"labels": y_train}
        l_train = flow.log_ratio(noised(train, 3), sigma, **labelled).numpy()
        l_train_fake = flow.log_ratio(noised(fake_for_train, 4), sigma, **labelled).numpy()
        real_terms, fake_terms = _logistic_terms(l_real, l_fake)
        train_real_terms, train_fake_terms = _logistic_terms(l_train, l_train_fake)
        class_terms.append((real_terms + fake_terms, train_real_terms + train_fake_terms))
        heldout_loss = float(real_terms.mean() + fake_terms.mean())
        train_loss = float(train_real_terms.mean() + train_fake_terms.mean())
        rows.append({
            "sigma": float(sigma),
            "heldout_loss": heldout_loss,
            "train_loss": train_loss,
            "overfit_gap": heldout_loss - train_loss,
            "accuracy": float(0.5 * ((l_real > 0).mean() + (l_fake < 0).mean())),
            "kl_q_p": float(-l_fake.mean()),
            "kl_p_q": float(l_real.mean()),
            "log_mean_ratio_q": float(np.log(np.mean(np.exp(np.clip(l_fake, -50, 50))))),
            "log_mean_inverse_ratio_p": float(np.log(np.mean(np.exp(np.clip(-l_real, -50, 50))))),
            "ratio_ess_q": effective_sample_fraction(l_fake),
        })
    warnings_ = []
    for row in rows:
        if row["overfit_gap"] > 0.05:
            warnings_.append(f"sigma={row['sigma']:.3g}: held-out loss exceeds training loss by "
                             f"{row['overfit_gap']:.3f} (overfitting: use more data, fewer steps or a penalty)")
        if row["ratio_ess_q"] >= 0.1 and abs(row["log_mean_ratio_q"]) > 0.25:
            warnings_.append(f"sigma={row['sigma']:.3g}: density ratio mis-calibrated (log E_q[r] = "
                             f"{row['log_mean_ratio_q']:.2f}, should be ~0): train longer")
    report = {"levels": rows, "warnings": warnings_, "good_enough": not warnings_, "chance_loss": 2 * math.log(2.0)}
    if conditional:
        report["classes"] = _per_class(sigmas, class_terms, y_heldout, y_train, np.asarray(train_labels),
                                       np.asarray(heldout_labels), min_class_samples)
        untrusted = [row for row in report["classes"] if not row["trusted"]]
        warnings_.extend(f"class {row['label']}: {row['why']}" for row in untrusted)
        report["good_enough"] = not warnings_
    return report


def _per_class(sigmas, class_terms, y_heldout, y_train, train_labels, heldout_labels, min_class_samples):
    """Per class: counts and, per σ, held-out and training logistic loss (pair terms), with the trust verdict."""
    classes = []
    for label in np.unique(np.concatenate([train_labels, heldout_labels])):
        in_heldout, in_train = y_heldout == label, y_train == label
        entry = {"label": int(label), "n_train": int(np.sum(train_labels == label)),
                 "n_heldout": int(np.sum(heldout_labels == label)), "levels": []}
        reasons = []
        if entry["n_train"] < min_class_samples:
            reasons.append(f"too little data: {entry['n_train']} training samples (< {min_class_samples})")
        for sigma, (heldout_terms, train_terms) in zip(sigmas, class_terms, strict=True):
            if not in_heldout.any() or not in_train.any():
                continue
            held, trained = heldout_terms[in_heldout], train_terms[in_train]
            error = math.sqrt(held.var() / len(held) + train_terms[in_train].var() / len(trained))
            gap = float(held.mean() - trained.mean())
            entry["levels"].append({"sigma": float(sigma), "heldout_loss": float(held.mean()),
                                    "train_loss": float(trained.mean()), "gap": gap, "standard_error": error})
            if gap > max(0.1, 3 * error):
                reasons.append(f"too little data to trust: held-out loss exceeds training loss by {gap:.3f} at "
                               f"sigma={sigma:.3g} (overfit)")
        if not in_heldout.any():
            reasons.append("no held-out samples to check it on")
        entry["trusted"] = not reasons
        entry["why"] = "; ".join(reasons) if reasons else "trusted"
        classes.append(entry)
    return classes


def format_diagnostics(report):
    """The calibration report as a Markdown table plus warnings."""
    lines = ["| sigma | held-out loss | train loss | accuracy | KL(q‖p) | KL(p‖q) | log E_q[r] | log E_p[1/r] "
             "| ESS_q |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["levels"]:
        lines.append(
            f"| {row['sigma']:.3g} | {row['heldout_loss']:.3f} | {row['train_loss']:.3f} | {row['accuracy']:.1%} | "
            f"{row['kl_q_p']:.3f} | {row['kl_p_q']:.3f} | {row['log_mean_ratio_q']:+.2f} | "
            f"{row['log_mean_inverse_ratio_p']:+.2f} | {row['ratio_ess_q']:.2f} |")
    lines.append(f"chance loss = {report['chance_loss']:.3f}; "
                 + ("calibration looks good enough to flow." if report["good_enough"] else "warnings:"))
    lines.extend(f"- {warning}" for warning in report["warnings"])
    classes = report.get("classes")
    if classes:
        lines += ["", "per class (log p_σ(x | y)/q_σ(x | y); largest held-out − training loss gap over σ):",
                  "| class | train samples | held-out samples | worst gap | verdict |", "|---|---|---|---|---|"]
        for row in classes:
            gap = max((level["gap"] for level in row["levels"]), default=float("nan"))
            lines.append(f"| {row['label']} | {row['n_train']} | {row['n_heldout']} | {gap:.3f} | {row['why']} |")
    stages = report.get("stages")
    if stages:
        lines += ["", "staged refinement (one discriminator per stage, calibrated on the particles as the flow moved "
                  "them; the flow stops before the first untrusted stage):",
                  "| stage | sigma | held-out loss | train loss | accuracy | verdict |", "|---|---|---|---|---|---|"]
        for row in stages:
            verdict = "trusted" if row["trusted"] else f"not trusted: {row['why']}"
            lines.append(f"| {row['stage']} | {row['sigma']:.3g} | {row['heldout_loss']:.3f} | "
                         f"{row['train_loss']:.3f} | "
                         f"{row['accuracy']:.1%} | {verdict} |")
        trusted = [row["sigma"] for row in stages if row["trusted"]]
        lines.append(f"trusted σ range: [{min(trusted):.3g}, {max(trusted):.3g}] ({len(trusted)} of {len(stages)} "
                     "stages)" if trusted else "no trusted stage: staged refinement leaves samples unchanged")
    return "\n".join(lines)
