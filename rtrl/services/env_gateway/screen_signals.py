"""Variables measured on the captured picture, for games whose memory cannot be read (docs/profiles.md,
"Screen signals").

`ScreenSignals(profile)` turns each raw frame (before preprocessing) into values that `RulesBackend` merges
with the memory variables, so every rule that reads a variable can read these too:

- `scroll` (`<name>_x`, `<name>_y`): where the camera is, in frame pixels, relative to the episode's first
  frame; x grows when the view moves right, y when it moves down. Each frame is phase-correlated with a key
  frame (not with the frame before: sub-pixel errors of consecutive pairs add up to a fifth of the distance
  at slow speeds), and the key frame moves on once the view has shifted an eighth of the region.
- `screen_change` (`<name>`): the sum since the reset of each frame's mean absolute change (grey levels), so
  a `stagnation` rule on it means "the picture has not changed".
- the score of each `template` reward or rule (keyed by where the profile defines it, "termination[0]"):
  the best normalized correlation of its image in its region.

A value that cannot be measured on a frame is NaN, which the rules treat as unknown: a scene cut, a picture
that correlates with nothing (scroll), a region that does not fit in the frame (logged once). Screen signals
never stop the clock, and an unknown one never ends an episode by itself.
"""

from __future__ import annotations

import logging
import math
import time

import cv2
import numpy as np

from rtrl.services.env_gateway.profiles import (
    GameProfile,
    Region,
    ScreenChangeSignal,
    ScrollSignal,
    TemplateMatch,
    shrink_grey,
)

log = logging.getLogger(__name__)

# The key frame moves on once the view has shifted this fraction of the region: far enough that its
# measurement error is paid rarely, near enough that the two pictures still mostly overlap.
KEY_FRAME_SHIFT_FRACTION = 1 / 8
# Without max_shift_px, a jump over this fraction of the region from one frame to the next is a scene cut.
DEFAULT_MAX_SHIFT_FRACTION = 1 / 4
# Phase correlation needs a few pixels in each direction.
MIN_SHRUNK_PX = 8
# A scroll signal unknown on this many frames in a row (2 s at 60 fps) is probably looking at the wrong region.
UNMEASURED_WARNING_FRAMES = 120
UNKNOWN = math.nan
# Where the view's motion is expected (it moved this way last frame), a credible peak within this many shrunk
# pixels wins over a higher one elsewhere: that one is usually what does not scroll (the player kept in the
# middle of the screen, a score bar), which stays put relative to the key frame while the scenery moves.
PREDICTION_RADIUS_PX = 2
# Screen signals run on the game clock's thread: costing more than this share of a frame on average over
# COST_CHECK_FRAMES frames is said once (a template searching a whole 640x480 frame takes half of it).
COST_WARNING_SHARE = 0.25
COST_CHECK_FRAMES = 60


def grey_region(frame: np.ndarray, region: Region | None, factor: int) -> np.ndarray | None:
    """The region of an RGB frame in grey, shrunk by `factor`; None when the region does not fit in the frame."""
    height, width = frame.shape[:2]
    if height == 0 or width == 0:
        return None
    if region is not None:
        if not region.fits(width, height):
            return None
        frame = frame[region.y : region.y + region.height, region.x : region.x + region.width]
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    return shrink_grey(grey, factor)


def scroll_factor(region_width: int, region_height: int, target_width: int) -> int:
    """The whole factor that shrinks a region to about `target_width` pixels across (never below MIN_SHRUNK_PX)."""
    return max(1, min(region_width // target_width, region_height // MIN_SHRUNK_PX))


class _Pictures:
    """The shrunk grey regions of one frame, computed once however many signals look at them."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self._cache: dict[tuple[Region | None, int], np.ndarray | None] = {}

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frame."""
        return self.frame.shape[1], self.frame.shape[0]

    def grey(self, region: Region | None, factor: int) -> np.ndarray | None:
        key = (region, factor)
        if key not in self._cache:
            self._cache[key] = grey_region(self.frame, region, factor)
        return self._cache[key]


def spectrum(picture: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The DFT of a grey picture with its mean removed and a Hanning window applied (edges would correlate)."""
    floats = picture.astype(np.float32)
    floats -= cv2.mean(floats)[0]
    floats *= window
    return cv2.dft(floats, flags=cv2.DFT_COMPLEX_OUTPUT)


def phase_correlate(
    reference: np.ndarray,
    current: np.ndarray,
    expected: tuple[float, float] | None = None,
    min_response: float = 0.0,
) -> tuple[float, float, float]:
    """How far the picture of spectrum `current` has moved from that of `reference`, in (shrunk) pixels, and the
    height of the correlation peak (1: the same picture shifted; about 0.05: unrelated pictures).

    With `expected` (dx, dy), the highest peak within PREDICTION_RADIUS_PX of it is taken when it reaches
    `min_response`, else the highest anywhere; never when that window holds (0, 0), see `_peak_near`.

    cv2.phaseCorrelate takes pictures, not spectra (so the key frame's would be recomputed every frame), and
    its weighted-centroid sub-pixel estimate pulls shifts toward whole pixels; Foroosh's estimate from the
    peak's higher neighbour does not.
    """
    cross = cv2.mulSpectrums(current, reference, 0, conjB=True)
    magnitude = cv2.magnitude(cross[..., 0], cross[..., 1])
    np.maximum(magnitude, 1e-9, out=magnitude)
    np.divide(cross, magnitude[..., np.newaxis], out=cross)
    surface = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    _, peak, _, (column, row) = cv2.minMaxLoc(surface)
    height, width = surface.shape
    if expected is not None:
        near = _peak_near(surface, expected)
        if near is not None and near[0] >= min_response:
            peak, column, row = near
    dx = column + _sub_pixel(surface[row, column - 1], peak, surface[row, (column + 1) % width])
    dy = row + _sub_pixel(surface[row - 1, column], peak, surface[(row + 1) % height, column])
    # The surface is circular: a peak past the middle is a shift the other way.
    if dx > width / 2:
        dx -= width
    if dy > height / 2:
        dy -= height
    return float(dx), float(dy), float(peak)


def _peak_near(surface: np.ndarray, expected: tuple[float, float]) -> tuple[float, int, int] | None:
    """The highest point of the circular surface within PREDICTION_RADIUS_PX of `expected`: (height, column, row).

    None when the window holds (0, 0), no shift from the key frame. There the highest point is what does not
    scroll, which the prediction exists to pass over; preferring it would only take a real jump of the view
    (from rest, right after a new key frame) for a shift of a pixel or two.
    """
    height, width = surface.shape
    radius = PREDICTION_RADIUS_PX
    if 2 * radius + 1 > min(width, height):
        return None
    centre_column, centre_row = round(expected[0]) % width, round(expected[1]) % height
    if min(centre_column, width - centre_column) <= radius and min(centre_row, height - centre_row) <= radius:
        return None
    # Rolled so that the window around the expected point is one slice (np.roll copies only this small surface).
    rolled = np.roll(surface, (radius - centre_row, radius - centre_column), axis=(0, 1))
    _, peak, _, (column, row) = cv2.minMaxLoc(rolled[: 2 * radius + 1, : 2 * radius + 1])
    return peak, (centre_column + column - radius) % width, (centre_row + row - radius) % height


def _sub_pixel(before: float, peak: float, after: float) -> float:
    """The peak's offset from its pixel toward its higher neighbour (Foroosh, Zerubia and Berthod, 2002)."""
    if after >= before and after > 0 and after + peak > 0:
        return after / (after + peak)
    if before > 0 and before + peak > 0:
        return -before / (before + peak)
    return 0.0


class ScrollTracker:
    """The camera's position from one region of the frame, measured against a key frame (module docstring)."""

    def __init__(self, signal: ScrollSignal, label: str) -> None:
        self.signal = signal
        self.label = label
        self._factor = 1
        self._window: np.ndarray | None = None
        self._key: np.ndarray | None = None
        """Spectrum of the key frame; None until a frame fits."""
        self._key_x = self._key_y = 0.0
        """The camera's position at the key frame, in frame pixels."""
        self._shift_x = self._shift_y = 0.0
        """The camera's last known position relative to the key frame."""
        self._step_x = self._step_y = 0.0
        """How far the camera moved from the frame before to the last known one (0 after an unknown frame)."""
        self._previous: np.ndarray | None = None
        self.unmeasured_in_a_row = 0
        self._warned = False

    def factor(self, frame_size: tuple[int, int]) -> int:
        region = self.signal.region
        width, height = (region.width, region.height) if region is not None else frame_size
        return scroll_factor(width, height, self.signal.width)

    def reset(self, picture: np.ndarray | None, factor: int) -> tuple[float, float]:
        self._key_x = self._key_y = 0.0
        self._shift_x = self._shift_y = 0.0
        self._step_x = self._step_y = 0.0
        self._key = None
        self.unmeasured_in_a_row = 0
        if picture is None:
            return UNKNOWN, UNKNOWN
        self._factor = factor
        self._new_key(picture, self._spectrum(picture))
        return 0.0, 0.0

    def measure(self, picture: np.ndarray | None, factor: int) -> tuple[float, float]:
        position = self._measure(picture, factor)
        if position is not None:
            self.unmeasured_in_a_row = 0
            return position
        self.unmeasured_in_a_row += 1
        if self.unmeasured_in_a_row >= UNMEASURED_WARNING_FRAMES and not self._warned and picture is not None:
            self._warned = True
            log.warning(
                "screen signal %s could not measure the view's shift on %d frames in a row (a correlation peak "
                "below min_response %.2f, or jumps over max_shift_px): its variables stay unknown meanwhile. Give "
                "it a region that shows the scrolling scene without the score bar, or lower min_response.",
                self.label,
                self.unmeasured_in_a_row,
                self.signal.min_response,
            )
        return UNKNOWN, UNKNOWN

    def _measure(self, picture: np.ndarray | None, factor: int) -> tuple[float, float] | None:
        if picture is None:
            self._key = self._previous = None
            return None
        previous = self._previous
        if self._key is None or previous is None or picture.shape != previous.shape or factor != self._factor:
            # The first picture after a gap or a change of size: the camera moved by an unknown amount meanwhile.
            self._factor = factor
            self._new_key(picture, self._spectrum(picture))
            self._step_x = self._step_y = 0.0
            return None
        if np.array_equal(picture, previous):
            # Nothing moved; this also covers flat pictures (a black loading screen), which correlate with nothing.
            self._step_x = self._step_y = 0.0
            return self._key_x + self._shift_x, self._key_y + self._shift_y
        current = self._spectrum(picture)
        # The picture moving left means the view moved right: shifts of the picture are minus the camera's.
        expected = (-(self._shift_x + self._step_x) / factor, -(self._shift_y + self._step_y) / factor)
        dx, dy, peak = phase_correlate(self._key, current, expected, self.signal.min_response)
        shift_x, shift_y = -dx * factor, -dy * factor
        height, width = picture.shape
        limit_x = self.signal.max_shift_px or DEFAULT_MAX_SHIFT_FRACTION * width * factor
        limit_y = self.signal.max_shift_px or DEFAULT_MAX_SHIFT_FRACTION * height * factor
        if (
            peak < self.signal.min_response
            or abs(shift_x - self._shift_x) > limit_x
            or abs(shift_y - self._shift_y) > limit_y
        ):
            # A scene cut or an unrecognisable picture: measure on from this one, from the last known position.
            self._new_key(picture, current)
            self._step_x = self._step_y = 0.0
            return None
        self._previous = picture
        self._step_x, self._step_y = shift_x - self._shift_x, shift_y - self._shift_y
        self._shift_x, self._shift_y = shift_x, shift_y
        position = self._key_x + shift_x, self._key_y + shift_y
        if abs(dx) >= KEY_FRAME_SHIFT_FRACTION * width or abs(dy) >= KEY_FRAME_SHIFT_FRACTION * height:
            self._new_key(picture, current)
        return position

    def _new_key(self, picture: np.ndarray, current: np.ndarray) -> None:
        """Measures from `picture` on; the camera's last known position becomes the key frame's."""
        self._key = current
        self._key_x += self._shift_x
        self._key_y += self._shift_y
        self._shift_x = self._shift_y = 0.0
        self._previous = picture

    def _spectrum(self, picture: np.ndarray) -> np.ndarray:
        height, width = picture.shape
        if self._window is None or self._window.shape != picture.shape:
            self._window = cv2.createHanningWindow((width, height), cv2.CV_32F)
        return spectrum(picture, self._window)


class ChangeTracker:
    """The summed mean absolute change of a shrunk grey region since the reset."""

    def __init__(self, signal: ScreenChangeSignal) -> None:
        self.signal = signal
        self.total = 0.0
        self._previous: np.ndarray | None = None

    def factor(self, frame_size: tuple[int, int]) -> int:
        region = self.signal.region
        width, height = (region.width, region.height) if region is not None else frame_size
        return scroll_factor(width, height, self.signal.width)

    def reset(self, picture: np.ndarray | None) -> float:
        self.total = 0.0
        self._previous = picture
        return UNKNOWN if picture is None else 0.0

    def measure(self, picture: np.ndarray | None) -> float:
        previous, self._previous = self._previous, picture
        if picture is None or previous is None or picture.shape != previous.shape:
            return UNKNOWN
        change = cv2.mean(cv2.absdiff(picture, previous))[0]
        if change >= self.signal.min_change:
            self.total += change
        return self.total


class ScreenSignals:
    """Every screen signal and template score of one profile, measured on each raw frame.

    `frame_rate_hz` is the game's: what the signals cost is compared with the time a frame lasts.
    """

    def __init__(self, profile: GameProfile, frame_rate_hz: float = 60.0) -> None:
        self.label = profile.label
        self.frame_period_ns = 1e9 / frame_rate_hz
        self._cost_ns = 0
        self._costed_frames = 0
        self._cost_warned = False
        self.scrolls = {
            name: ScrollTracker(signal, f"screen.{name}")
            for name, signal in profile.screen.items()
            if isinstance(signal, ScrollSignal)
        }
        self.changes = {
            name: ChangeTracker(signal)
            for name, signal in profile.screen.items()
            if isinstance(signal, ScreenChangeSignal)
        }
        self.templates = profile.templates
        self._regions = {f"screen.{name}": signal.region for name, signal in profile.screen.items()}
        self._reported: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.scrolls or self.changes or self.templates)

    def reset(self, frame: np.ndarray) -> dict[str, float]:
        """The values on an episode's first frame (scroll and change start at 0)."""
        pictures = _Pictures(frame)
        values: dict[str, float] = {}
        for name, scroll in self.scrolls.items():
            factor = scroll.factor(pictures.size)
            values[f"{name}_x"], values[f"{name}_y"] = scroll.reset(
                self._scroll_picture(pictures, name, factor), factor
            )
        for name, change in self.changes.items():
            values[name] = change.reset(self._grey(pictures, name, change.factor(pictures.size)))
        for match in self.templates:
            values[match.signal] = self._score(pictures, match)
        return values

    def measure(self, frame: np.ndarray) -> dict[str, float]:
        """The values on one more frame of the episode; NaN for what cannot be measured on it."""
        started_ns = time.perf_counter_ns()
        values = self._measure(frame)
        if not self._cost_warned:
            self._cost_ns += time.perf_counter_ns() - started_ns
            self._costed_frames += 1
            if self._costed_frames == COST_CHECK_FRAMES:
                self._check_cost()
        return values

    def _check_cost(self) -> None:
        mean_ns = self._cost_ns / self._costed_frames
        self._cost_ns = self._costed_frames = 0
        if mean_ns > COST_WARNING_SHARE * self.frame_period_ns:
            self._cost_warned = True
            log.warning(
                "the screen signals of profile %s take %.1f ms a frame on average, %.0f%% of the %.1f ms a frame "
                "lasts, on the game clock's thread; give template rules a region or a downscale and scrolls a "
                "smaller width (docs/profiles.md lists what each costs).",
                self.label,
                mean_ns / 1e6,
                100 * mean_ns / self.frame_period_ns,
                self.frame_period_ns / 1e6,
            )

    def _measure(self, frame: np.ndarray) -> dict[str, float]:
        pictures = _Pictures(frame)
        values: dict[str, float] = {}
        for name, scroll in self.scrolls.items():
            factor = scroll.factor(pictures.size)
            values[f"{name}_x"], values[f"{name}_y"] = scroll.measure(
                self._scroll_picture(pictures, name, factor), factor
            )
        for name, change in self.changes.items():
            values[name] = change.measure(self._grey(pictures, name, change.factor(pictures.size)))
        for match in self.templates:
            values[match.signal] = self._score(pictures, match)
        return values

    def _grey(self, pictures: _Pictures, name: str, factor: int) -> np.ndarray | None:
        label = f"screen.{name}"
        region = self._regions[label]
        picture = pictures.grey(region, factor)
        if picture is None:
            width, height = pictures.size
            self._report_once(
                label,
                f"region {region} of screen signal {label} does not fit in the {width}x{height} captured frame; its "
                f"variables are unknown (the rules that read them give nothing) until it does: fix {label}.region "
                f"in profile {self.label}",
            )
        return picture

    def _scroll_picture(self, pictures: _Pictures, name: str, factor: int) -> np.ndarray | None:
        picture = self._grey(pictures, name, factor)
        if picture is not None and min(picture.shape) < MIN_SHRUNK_PX:
            width, height = pictures.size
            self._report_once(
                f"screen.{name}",
                f"the {width}x{height} captured frame is too small for screen signal screen.{name} (phase correlation "
                f"needs {MIN_SHRUNK_PX} pixels each way); its variables are unknown",
            )
            return None
        return picture

    def _score(self, pictures: _Pictures, match: TemplateMatch) -> float:
        """The best normalized correlation of the template in its region, or NaN when it cannot be looked for."""
        width, height = pictures.size
        picture = pictures.grey(match.region, match.downscale)
        if picture is None:
            self._report_once(
                match.signal,
                f"region {match.region} of the template rule {match.signal} ({match.image.name}) does not fit in the "
                f"{width}x{height} captured frame; the rule gives nothing until it does: fix {match.signal}.region in "
                f"profile {self.label}",
            )
            return UNKNOWN
        if picture.shape[0] < match.pixels.shape[0] or picture.shape[1] < match.pixels.shape[1]:
            self._report_once(
                match.signal,
                f"the image of the template rule {match.signal} ({match.image.name}) is larger than the "
                f"{width}x{height} captured frame; the rule gives nothing: crop the image in profile {self.label}",
            )
            return UNKNOWN
        scores = cv2.matchTemplate(picture, match.pixels, cv2.TM_CCOEFF_NORMED)
        best = cv2.minMaxLoc(scores)[1]
        # OpenCV gives 0 where the picture is flat; a non-finite score would be a flat template, refused at load.
        return float(best) if math.isfinite(best) else 0.0

    def _report_once(self, key: str, sentence: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.warning("%s.", sentence)
