// aedes on 127.0.0.1:PORT with its in-memory persistence: `node aedes-broker.mjs NODE_MODULES PORT`.
// The tests start and stop it (helpers/brokers.py); aedes itself comes from build/aedes.
import { createServer } from 'node:net'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [modules, port] = process.argv.slice(2)
const { Aedes } = await import(pathToFileURL(join(modules, 'aedes', 'aedes.js')).href)
const aedes = await Aedes.createBroker()
aedes.on('clientError', (client, err) => console.log(`client ${client.id}: ${err.message}`))
aedes.on('connectionError', (client, err) => console.log(`connection: ${err.message}`))
const server = createServer(aedes.handle)
server.listen(Number(port), '127.0.0.1', () => console.log(`aedes listening on ${port}`))
process.on('SIGTERM', () => aedes.close(() => server.close(() => process.exit(0))))
