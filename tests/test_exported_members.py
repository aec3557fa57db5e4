import keybrake


def test_all_is_complete_and_sorted() -> None:
    public = {name for name in dir(keybrake) if not name.startswith("_")}
    public -= {
        "vendors",
        "server",
        "cli",
        "integrations",
        "sync",
    }  # subpackages and modules, imported on demand
    assert public <= set(keybrake.__all__)
    assert keybrake.__all__ == sorted(keybrake.__all__)
    for name in keybrake.__all__:
        assert hasattr(keybrake, name), name


def test_every_error_derives_from_keybrake_error() -> None:
    for name in keybrake.__all__:
        value = getattr(keybrake, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, keybrake.KeybrakeError), name
