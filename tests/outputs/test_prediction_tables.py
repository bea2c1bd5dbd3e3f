"""The prediction benchmark's paper outputs (``lib.outputs.prediction_tables``) on the tiny pipeline: its tables and
macros, the README block, and the calibration file the API reads."""
import json

from lib.outputs import prediction_tables, readme
from lib.records.prediction import load_scores


def test_paper_outputs_readme_block_and_calibration(tiny_pipeline, tmp_path):
    assert (tiny_pipeline.generated_dir / "prediction_scores.tex").is_file()
    assert (tiny_pipeline.generated_dir / "prediction_tasks.tex").is_file()
    numbers = json.loads((tiny_pipeline.generated_dir / "numbers.json").read_text())
    _, section = tiny_pipeline.stage("prediction")
    assert numbers["PredTasks"] == str(len(section.tasks)) and "landscape" in numbers["PredDecision"]
    block = readme.prediction_block(tiny_pipeline.store.profile, tiny_pipeline.store)
    assert block.startswith(readme.PRED_BEGIN.format(profile=tiny_pipeline.store.profile)) and "| power_law |" in block
    path = prediction_tables.write_calibration(tiny_pipeline.store, tmp_path / "calibration.json")
    cal = json.loads(path.read_text())
    assert cal["source"]["profile"] == tiny_pipeline.store.profile and cal["source"]["git"]["commit"]
    assert set(load_scores(tiny_pipeline.store)["calibration"]) <= set(cal)
