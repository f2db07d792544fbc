

def test_lies_within_compares_absolute_paths_not_prefixes(tmp_path, monkeypatch):
    from pipeline.paths import lies_within

    monkeypatch.chdir(tmp_path)
    assert lies_within("data/prepared/x.csv", tmp_path / "data" / "prepared")
    assert lies_within(tmp_path / "data", "data")
    assert lies_within("data/./prepared", "data")
    assert not lies_within("data/prepared_old", "data/prepared")  # a shared prefix is not nesting
    assert not lies_within("data", "data/prepared")
    assert not lies_within("data/../other", "data")
