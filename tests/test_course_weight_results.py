"""What each shipped course weight produces: better than its baseline, on held-out data, by the measure
it was trained for. A weight that stopped learning, or a loader that read it wrong, fails here."""
from __future__ import annotations

import pytest
import torch

from comicutils import comicdiff as cd
from comicutils import course_weights, data, stylizers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SIZE = 256                                      # the size the course weights were trained at


@pytest.fixture(scope="module")
def held_out(mirror):
    _, test = data.train_test_pairs(data.face2comics_pairs("v2", size=SIZE))   # never seen in training
    return test


def test_every_shipped_weight_has_a_result_test():
    tested = set(PIX2PIX) | set(ADAPTERS) | {"comicdiff-denoiser", "stylegan-photo", "stylegan-comic"}
    assert set(course_weights.registry()) <= tested, set(course_weights.registry()) - tested


PIX2PIX = {"pix2pix": "course", "pix2pix-style": "course-style"}


@pytest.mark.parametrize("name", sorted(PIX2PIX))
def test_a_course_pix2pix_generator_is_closer_to_the_comics_than_the_photos_are(name, held_out):
    """Trained with λ_L1 · L1 (plus the GAN and, for -style, chapter 01's terms): L1 to the artist's comic."""
    out = stylizers.build("pix2pix", checkpoint=PIX2PIX[name])(held_out.photos)
    ours, identity = (out - held_out.comics).abs().mean(), (held_out.photos - held_out.comics).abs().mean()
    assert ours < 0.9 * identity, (name, float(ours), float(identity))


ADAPTERS = {"comicdiff-adapter": "course", "comicdiff-adapter-adv": "course-adv",
            "comicdiff-adapter-style": "course-style", "comicdiff-adapter-ink": "course-ink"}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_a_course_comicdiff_adapter_is_closer_to_the_comics_than_the_photos_are(name, held_out):
    """Trained with MSE + λ · perceptual (plus the named extra term): MSE to the artist's comic, and the
    VAE reconstruction (α = 0) is no match for it."""
    styl = stylizers.build("comicdiff", adapter=ADAPTERS[name])
    out = styl(held_out.photos)
    recon = stylizers.build("comicdiff", model=styl.model, alpha=0.0)(held_out.photos)
    mse = {k: float((v - held_out.comics).pow(2).mean()) for k, v in
           {"adapter": out, "identity": held_out.photos, "alpha 0": recon}.items()}
    assert mse["adapter"] < 0.8 * mse["identity"] and mse["adapter"] < mse["alpha 0"], (name, mse)


def test_the_course_denoiser_denoises_held_out_latents_better_than_a_random_unet(held_out):
    den = course_weights.load_denoiser()
    comp = cd.offline_components(unet=den, announce=False)
    with torch.no_grad():
        z = comp.codec.encode(held_out.photos).float()
    random = cd.build_unet(dict(den.config), seed=1)
    trained = cd.denoising_error(den, z, comp.prompt_embeds, comp.scheduler_config)
    untrained = cd.denoising_error(random, z, comp.prompt_embeds, comp.scheduler_config)
    assert trained < 0.7 * untrained, (trained, untrained)


def test_the_course_photo_generator_rebuilds_its_photos_from_its_latents():
    """Trained by regression (GLO) onto its photos with their learned z: far closer than their mean image."""
    G, z = course_weights.load_stylegan("stylegan-photo", with_latents=True)
    size = G.config.size if hasattr(G.config, "size") else G.size
    photos = course_weights.stylegan_photo_set(size)
    idx = torch.arange(0, len(photos), 7)
    with torch.no_grad():
        rebuilt = (G(z[idx]) + 1) / 2 if G(z[idx[:1]]).min() < 0 else G(z[idx])
    ours = (rebuilt.clamp(0, 1) - photos[idx]).pow(2).mean()
    mean_image = (photos.mean(0, keepdim=True) - photos[idx]).pow(2).mean()
    assert ours < 0.5 * mean_image, (float(ours), float(mean_image))


def test_the_course_comic_generator_turns_a_photos_latent_into_its_comic():
    """Taught the paired comics on the photo generator's z: closer to each comic than its photo is."""
    _, z = course_weights.load_stylegan("stylegan-photo", with_latents=True)     # the photos' z's
    G = course_weights.load_stylegan("stylegan-comic")
    size = G.config.size if hasattr(G.config, "size") else G.size
    comics, index = course_weights.stylegan_comic_set(size)
    photos = course_weights.stylegan_photo_set(size)[index]
    with torch.no_grad():
        out = G(z[index])
    out = ((out + 1) / 2 if out.min() < 0 else out).clamp(0, 1)
    ours, identity = (out - comics).pow(2).mean(), (photos - comics).pow(2).mean()
    assert ours < 0.8 * identity, (float(ours), float(identity))
