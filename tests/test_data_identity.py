"""A workdir's token ids keep their meaning: an edited corpus or a swapped
vocabulary is refused on resume and in translation, naming what changed."""

import json
import os
import shutil

import pytest
import tiny_corpus

from attention_jax import sharding
from attention_jax import translate
from attention_jax.data import data_identity
from attention_jax.data import input_pipeline
from attention_jax.train import trainer


def test_resume_on_an_edited_corpus_is_refused_naming_it(tmp_path):
  config = tiny_corpus.config(tmp_path)
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)
  with open(data_identity.path(workdir)) as f:
    record = json.load(f)
  assert record['vocab_sha256'] == data_identity.file_sha256(
      os.path.join(workdir, 'vocab.model'))
  vocab_before = data_identity.file_sha256(
      os.path.join(workdir, 'vocab.model'))

  # The training TSV replaced by new content at the same path.
  tiny_corpus.write_tsv(tmp_path / 'train.tsv', seed=99)
  config.num_train_steps = 4
  with pytest.raises(ValueError) as refused:
    trainer.train_and_evaluate(config, workdir)
  message = str(refused.value)
  assert record['corpus'] in message
  assert 'training files changed' in message
  assert 'new --workdir' in message
  # Nothing of the old run's vocabulary was replaced.
  assert data_identity.file_sha256(
      os.path.join(workdir, 'vocab.model')) == vocab_before


def test_resume_refuses_a_swapped_workdir_vocabulary(tmp_path):
  config = tiny_corpus.config(tmp_path)
  workdir = str(tmp_path / 'run')
  input_pipeline.load(config.data, workdir)
  other = tiny_corpus.config(tmp_path / 'other')
  tiny_corpus.write_tsv(tmp_path / 'other' / 'train.tsv', seed=7)
  input_pipeline.load(other.data, str(tmp_path / 'other_run'))
  shutil.copyfile(tmp_path / 'other_run' / 'vocab.model',
                  os.path.join(workdir, 'vocab.model'))
  with pytest.raises(ValueError, match='vocab.model is not the vocabulary '
                     'the checkpoint was trained with'):
    input_pipeline.load(config.data, workdir, resuming=True)


def test_resume_uses_the_workdir_vocabulary_not_the_data_dir_one(tmp_path):
  config = tiny_corpus.config(tmp_path)
  workdir = str(tmp_path / 'run')
  first = input_pipeline.load(config.data, workdir)
  # data_dir may move on resume: the workdir's vocabulary is the one used.
  config.data.data_dir = str(tmp_path / 'moved')
  resumed = input_pipeline.load(config.data, workdir, resuming=True)
  assert resumed.tokenizer.serialized_model_proto() == (
      first.tokenizer.serialized_model_proto())
  assert not os.path.exists(tmp_path / 'moved')


def test_resume_of_a_workdir_without_record_checks_its_vocabulary(tmp_path):
  config = tiny_corpus.config(tmp_path)
  workdir = str(tmp_path / 'run')
  input_pipeline.load(config.data, workdir)
  os.remove(data_identity.path(workdir))
  input_pipeline.load(config.data, workdir, resuming=True)
  assert data_identity.read(workdir) is not None  # Recorded now.
  os.remove(data_identity.path(workdir))
  tiny_corpus.write_tsv(tmp_path / 'train.tsv', seed=99)
  with pytest.raises(ValueError, match='differs from the vocabulary of the '
                     'configured corpus'):
    input_pipeline.load(config.data, workdir, resuming=True)


def test_translate_refuses_a_vocabulary_other_than_the_recorded_one(tmp_path):
  config = tiny_corpus.config(tmp_path)
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  translate.load_params(workdir, mesh)
  other = tiny_corpus.config(tmp_path / 'other')
  tiny_corpus.write_tsv(tmp_path / 'other' / 'train.tsv', seed=7)
  input_pipeline.load(other.data, str(tmp_path / 'other_run'))
  shutil.copyfile(tmp_path / 'other_run' / 'vocab.model',
                  os.path.join(workdir, 'vocab.model'))
  with pytest.raises(ValueError, match='is not the vocabulary the checkpoint '
                     'was trained with'):
    translate.load_params(workdir, mesh)


def test_a_damaged_record_is_named(tmp_path):
  os.makedirs(tmp_path / 'run')
  (tmp_path / 'run' / data_identity.FILE_NAME).write_text('')
  with pytest.raises(ValueError, match='data.json is damaged'):
    data_identity.check_vocabulary(str(tmp_path / 'run'))
