"""Network query backends for SDSS catalogue SQL: SkyServer (anonymous, via astroquery) and
SciServer CasJobs (batch jobs into MyDB, token from the environment).

Import the clients from their modules: `ssl_photoz.query.skyserver.SkyServerClient` and
`ssl_photoz.query.casjobs.CasJobsClient`; errors shared by both live in
`ssl_photoz.query.http_errors`.
"""
