"""The settings path every control surface shares: validation, atomicity, the message envelope."""

import threading

import pytest

from dreamcam.plugin.control import SettingsStore
from dreamcam.plugin.messages import MAX_MESSAGE_BYTES, decode, handle_event, settings_event
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings, apply_changes


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"strength": -0.1}, "strength"),
        ({"strength": "high"}, "strength"),
        ({"prompt": "x" * 100_000}, "prompt"),
        ({"cfg_type": "extreme"}, "cfg_type"),
        ({"seed": 1.5}, "seed"),
        ({"t_index_list": [30, 20]}, "t_index_list"),
        ({"t_index_list": [10, 60]}, "t_index_list"),
        ({"similarity_filter": "yes"}, "similarity_filter"),
        ({"guidance_scale": True}, "guidance_scale"),
    ],
)
def test_bad_values_name_the_field_and_keep_previous(changes, field):
    store = SettingsStore(StreamSettings(prompt="before"))
    with pytest.raises(SettingsError) as err:
        store.apply({"prompt": "after", **changes} if field != "prompt" else changes)
    assert err.value.field == field
    assert field in str(err.value)
    assert store.current.prompt == "before"
    assert store.version == 0


def test_range_message_says_what_is_allowed():
    with pytest.raises(SettingsError, match=r"from 0.0 to 1.0"):
        apply_changes(StreamSettings(), {"strength": 2})


def test_partial_update_keeps_other_fields_and_reports_unknown():
    start = StreamSettings(prompt="a", negative_prompt="neg", seed=7)
    new, unknown = apply_changes(start, {"prompt": "b", "bogus": 1})
    assert (new.prompt, new.negative_prompt, new.seed) == ("b", "neg", 7)
    assert unknown == ["bogus"]
    assert start.prompt == "a"


def test_store_notifies_once_per_real_change():
    store = SettingsStore()
    seen = []
    store.subscribe(lambda s, origin: seen.append((s.prompt, origin)))
    store.apply({"prompt": "p1"}, origin="obs")
    store.apply({"prompt": "p1"}, origin="obs")  # no change, no event
    assert seen == [("p1", "obs")]
    assert store.version == 1


def test_concurrent_updates_are_atomic():
    store = SettingsStore()

    def writer(i):
        for _ in range(200):
            store.apply({"prompt": f"p{i}", "seed": i})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    current = store.current
    assert current.prompt == f"p{current.seed}"


def test_sizes_are_live_and_checked_like_the_core_engines_are_start_only():
    with pytest.raises(SettingsError, match="^width: must be a multiple of 8, got 500"):
        StreamSettings(width=500)
    with pytest.raises(SettingsError, match="^height: must be from 32 to 2048, got 4096"):
        StreamSettings(height=4096)
    assert StreamSettings(width=768, height=432).height == 432
    with pytest.raises(SettingsError, match="engine"):
        AppSettings(engine="warp")
    with pytest.raises(TypeError):
        AppSettings(width=768)  # no longer chosen at start: [stream], `dreamcam set width=...`


def test_password_not_in_repr():
    assert "hunter2" not in repr(AppSettings(obs_password="hunter2"))


def test_messages_round_trip_and_reject_bad_envelopes():
    store = SettingsStore()
    assert handle_event(store, settings_event({"prompt": "cat", "strength": 0.3}), "t") is None
    assert (store.current.prompt, store.current.strength) == ("cat", 0.3)
    assert decode({"unrelated": True}) is None
    error = handle_event(store, {"dreamcam": {"v": 99, "kind": "settings", "prompt": "dog"}}, "t")
    assert "version" in error and store.current.prompt == "cat"
    error = handle_event(store, settings_event({"prompt": "y" * (MAX_MESSAGE_BYTES + 1)}), "t")
    assert "bytes" in error and store.current.prompt == "cat"
    assert handle_event(store, {"dreamcam": {"v": 1, "kind": "dance"}}, "t") is None
    assert store.version == 1


def test_frames_in_flight_is_validated_and_frame_batching_points_to_it():
    assert AppSettings(frames_in_flight=3).frames_in_flight == 3
    with pytest.raises(SettingsError, match="frames_in_flight"):
        AppSettings(frames_in_flight=9)
    with pytest.raises(SettingsError, match="frames_in_flight") as err:
        AppSettings(frame_buffer_size=2)  # the runner sends one frame per call
    assert err.value.field == "frame_buffer_size"
