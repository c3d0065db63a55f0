"""Serving (DESIGN.md §2, stage 8): ``cathrepo serve``, an OpenAI-compatible HTTP server over the
repository's revisions and tenants.

- :mod:`~cathrepo.serve.select`: the one function that turns a request's ``model`` into the edits it gets
  (a ref, a tenant, or ``tenant@ref``), with their provenance;
- :mod:`~cathrepo.serve.cache`: materialized models, bounded, one lock each;
- :mod:`~cathrepo.serve.inference`: request parameters, prompts (chat template) and generation;
- :mod:`~cathrepo.serve.batching`: requests to one model decoded together, under its lock;
- :mod:`~cathrepo.serve.server`: settings, the base model, and the work of a request off the event loop;
- :mod:`~cathrepo.serve.app`: the aiohttp application (routes, bearer token, bounds, errors, logging);
- :mod:`~cathrepo.serve.listen`: listening in the foreground or in a background thread.

This layer sits above :mod:`cathrepo.repo` and below :mod:`cathrepo.bench` and the command line.
"""
